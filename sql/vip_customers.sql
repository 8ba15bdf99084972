-- Customers worth more than :min_value, matched in Actito on profileId.
SELECT actito_profile_id AS "profileId", lifetime_value
FROM customers
WHERE lifetime_value >= :min_value
ORDER BY lifetime_value DESC, customer_id
