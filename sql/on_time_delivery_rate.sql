-- On-time delivery rate: share of delivered orders (delivered_date present, including orders returned later) that arrived on or before the promised date, by month of order date.
SELECT
  t.period,
  CAST(sum(t.on_time) AS DOUBLE) AS numerator,
  CAST(count(*) AS DOUBLE) AS denominator
FROM (
  SELECT
    CAST(date_trunc('month', order_date) AS DATE) AS period,
    CASE WHEN delivered_date <= promised_date THEN 1 ELSE 0 END AS on_time
  FROM order_facts
  WHERE delivered_date IS NOT NULL
) t
GROUP BY t.period
ORDER BY t.period
