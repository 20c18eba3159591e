-- Monthly revenue (EUR): net amount of all orders that were not returned, by month of order date.
SELECT
  t.period,
  CAST(sum(t.net_amount) AS DOUBLE) AS value
FROM (
  SELECT
    CAST(date_trunc('month', order_date) AS DATE) AS period,
    net_amount
  FROM order_facts
  WHERE status <> 'returned'
) t
GROUP BY t.period
ORDER BY t.period
