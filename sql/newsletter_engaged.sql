-- Newsletter subscribers who bought at least :min_orders times.
-- The identifier column is aliased to Actito's attribute name, so no identifier_column is needed.
SELECT email AS "emailAddress"
FROM customers
WHERE newsletter_optin = 1
  AND orders_count >= :min_orders
ORDER BY customer_id
