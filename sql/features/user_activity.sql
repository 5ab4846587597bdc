-- What each user did in the 1, 7 and 30 days up to their latest interaction.
-- Windows end at the user's own latest event (the row's event_time), so a user's row depends only on
-- their own interactions and a refresh recomputes just the users with new events.
-- @entity user_id
-- @event_time event_time
-- @ttl 90 days
-- @materialize offline, online
WITH latest AS (
    SELECT user_id, max(ts) AS last_ts
    FROM interactions
    GROUP BY user_id
)
SELECT
    i.user_id,
    l.last_ts AS event_time,
    count(*) FILTER (WHERE i.ts > l.last_ts - INTERVAL '1 day') AS events_1d,
    count(*) FILTER (WHERE i.ts > l.last_ts - INTERVAL '7 days') AS events_7d,
    count(*) FILTER (WHERE i.ts > l.last_ts - INTERVAL '30 days') AS events_30d,
    count(*) FILTER (WHERE i.event = 'click' AND i.ts > l.last_ts - INTERVAL '7 days') AS clicks_7d,
    count(*) FILTER (WHERE i.event = 'purchase' AND i.ts > l.last_ts - INTERVAL '30 days') AS purchases_30d,
    CAST(count(*) FILTER (WHERE i.event = 'click' AND i.ts > l.last_ts - INTERVAL '7 days') AS DOUBLE)
        / NULLIF(count(*) FILTER (WHERE i.event = 'view' AND i.ts > l.last_ts - INTERVAL '7 days'), 0)
        AS ctr_7d,
    count(DISTINCT i.item_id) FILTER (WHERE i.ts > l.last_ts - INTERVAL '30 days') AS distinct_items_30d,
    sum(time_decay(i.ts, l.last_ts, INTERVAL '7 days')) AS decayed_events
FROM interactions i
JOIN latest l ON i.user_id = l.user_id
GROUP BY i.user_id, l.last_ts
