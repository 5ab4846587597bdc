-- How strongly each user is drawn to each item they touched: interactions weighted by kind
-- (purchase 5, click 2, view 1) and decayed with a 14-day half-life up to the pair's latest event.
-- @entity user_id, item_id
-- @event_time event_time
-- @ttl 60 days
-- @materialize offline, online
SELECT
    user_id,
    item_id,
    max(ts) AS event_time,
    count(*) AS interactions,
    count(*) FILTER (WHERE event = 'purchase') AS purchases,
    sum(weight * time_decay(ts, last_ts, INTERVAL '14 days')) AS affinity
FROM (
    SELECT
        user_id,
        item_id,
        event,
        ts,
        max(ts) OVER (PARTITION BY user_id, item_id) AS last_ts,
        CASE event WHEN 'purchase' THEN 5.0 WHEN 'click' THEN 2.0 ELSE 1.0 END AS weight
    FROM interactions
)
GROUP BY user_id, item_id
