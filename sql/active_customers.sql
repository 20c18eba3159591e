-- Active customers: number of distinct customers who placed at least one order in the month, per customer segment.
SELECT
  t.period,
  t.segment,
  CAST(count(DISTINCT t.customer_id) AS DOUBLE) AS value
FROM (
  SELECT
    CAST(date_trunc('month', o.order_date) AS DATE) AS period,
    c.segment AS segment,
    o.customer_id AS customer_id
  FROM orders o
  JOIN customers c ON c.customer_id = o.customer_id
) t
GROUP BY t.period, t.segment
ORDER BY t.period, t.segment
