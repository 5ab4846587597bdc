-- How much attention each item got in the 1, 7 and 30 days up to its latest interaction.
-- @entity item_id
-- @event_time event_time
-- @ttl 30 days
-- @materialize offline, online
WITH latest AS (
    SELECT item_id, max(ts) AS last_ts
    FROM interactions
    GROUP BY item_id
)
SELECT
    i.item_id,
    l.last_ts AS event_time,
    count(*) FILTER (WHERE i.event = 'view' AND i.ts > l.last_ts - INTERVAL '1 day') AS views_1d,
    count(*) FILTER (WHERE i.event = 'view' AND i.ts > l.last_ts - INTERVAL '7 days') AS views_7d,
    count(*) FILTER (WHERE i.event = 'click' AND i.ts > l.last_ts - INTERVAL '7 days') AS clicks_7d,
    count(*) FILTER (WHERE i.event = 'purchase' AND i.ts > l.last_ts - INTERVAL '30 days') AS purchases_30d,
    count(DISTINCT i.user_id) FILTER (WHERE i.ts > l.last_ts - INTERVAL '7 days') AS users_7d,
    CAST(count(*) FILTER (WHERE i.event = 'click' AND i.ts > l.last_ts - INTERVAL '7 days') AS DOUBLE)
        / NULLIF(count(*) FILTER (WHERE i.event = 'view' AND i.ts > l.last_ts - INTERVAL '7 days'), 0)
        AS ctr_7d
FROM interactions i
JOIN latest l ON i.item_id = l.item_id
GROUP BY i.item_id, l.last_ts
