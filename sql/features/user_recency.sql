-- When each user was first and last seen, and last clicked and bought: recency features.
-- @entity user_id
-- @event_time event_time
-- @materialize offline, online
SELECT
    user_id,
    max(ts) AS event_time,
    min(ts) AS first_seen,
    max(ts) FILTER (WHERE event = 'click') AS last_click,
    max(ts) FILTER (WHERE event = 'purchase') AS last_purchase,
    count(DISTINCT date_trunc('day', ts)) AS active_days
FROM interactions
GROUP BY user_id
