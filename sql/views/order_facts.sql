-- Order facts: one row per order with its net amount, sum(quantity * unit_price * (1 - discount)) over its lines.
-- quantity is cast to DECIMAL(10,0) and the literal 1 to DECIMAL(4,2) so the whole product stays
-- exact DECIMAL arithmetic (DECIMAL(27,4) per line) instead of being widened to the 38-digit limit.
SELECT
  o.order_id,
  o.customer_id,
  o.order_date,
  o.status,
  o.channel,
  o.promised_date,
  o.delivered_date,
  sum(CAST(l.quantity AS DECIMAL(10,0)) * l.unit_price * (CAST(1 AS DECIMAL(4,2)) - l.discount)) AS net_amount
FROM orders o
JOIN order_lines l ON l.order_id = o.order_id
GROUP BY
  o.order_id,
  o.customer_id,
  o.order_date,
  o.status,
  o.channel,
  o.promised_date,
  o.delivered_date
