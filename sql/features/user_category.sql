-- How much of each user's attention goes to each item category, and how often they click there:
-- the taste a ranker can match against a candidate item's category (needs the items table).
-- A user's shares depend on all of their categories at once, so the view is recomputed whole.
-- @entity user_id, category
-- @event_time event_time
-- @ttl 90 days
-- @materialize offline, online
-- @refresh full
SELECT
    user_id,
    category,
    event_time,
    events,
    CAST(events AS DOUBLE) / sum(events) OVER (PARTITION BY user_id) AS share,
    CAST(clicks AS DOUBLE) / NULLIF(views, 0) AS ctr
FROM (
    SELECT
        i.user_id,
        it.category,
        max(i.ts) AS event_time,
        count(*) AS events,
        count(*) FILTER (WHERE i.event = 'view') AS views,
        count(*) FILTER (WHERE i.event = 'click') AS clicks
    FROM interactions i
    JOIN items it ON i.item_id = it.item_id
    GROUP BY i.user_id, it.category
)
