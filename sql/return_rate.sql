-- Return rate: share of the orders placed in the month that have been returned (by month of order date).
SELECT
  t.period,
  CAST(sum(t.is_returned) AS DOUBLE) AS numerator,
  CAST(count(*) AS DOUBLE) AS denominator
FROM (
  SELECT
    CAST(date_trunc('month', order_date) AS DATE) AS period,
    CASE WHEN status = 'returned' THEN 1 ELSE 0 END AS is_returned
  FROM order_facts
) t
GROUP BY t.period
ORDER BY t.period
