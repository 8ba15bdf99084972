-- Customers with an order, scored in pandas by sql/vip_scored.py (the score is not SQL's job here:
-- the analyst's formula lives in Python). Every column the function reads is selected.
SELECT email AS mail, country, orders_count, lifetime_value, loyalty_tier
FROM customers
WHERE orders_count >= 1
ORDER BY customer_id
