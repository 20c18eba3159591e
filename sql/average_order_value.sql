-- Average order value (EUR): revenue of orders that were not returned divided by the number of those orders, by month of order date.
SELECT
  t.period,
  CAST(sum(t.net_amount) AS DOUBLE) AS numerator,
  CAST(count(*) AS DOUBLE) AS denominator
FROM (
  SELECT
    CAST(date_trunc('month', order_date) AS DATE) AS period,
    net_amount
  FROM order_facts
  WHERE status <> 'returned'
) t
GROUP BY t.period
ORDER BY t.period
