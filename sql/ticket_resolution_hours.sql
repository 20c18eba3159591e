-- Ticket resolution time: average hours from opened_at to resolved_at of resolved support tickets, by month the ticket was opened.
SELECT
  t.period,
  avg(t.resolution_hours) AS value
FROM (
  SELECT
    CAST(date_trunc('month', opened_at) AS DATE) AS period,
    CAST(date_part('epoch', resolved_at) - date_part('epoch', opened_at) AS DOUBLE) / 3600.0 AS resolution_hours
  FROM tickets
  WHERE resolved_at IS NOT NULL
) t
GROUP BY t.period
ORDER BY t.period
