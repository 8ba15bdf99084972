-- Buyers whose last order is between :min_days and :max_days days before the run date.
-- :run_date is the run's date in the schedule's time zone. No ORDER BY: the activation is cleaned in
-- the warehouse (clean_in), which groups and sorts the addresses itself.
SELECT email
FROM customers
WHERE last_order_at IS NOT NULL
  AND last_order_at <= date(:run_date, '-' || :min_days || ' days')
  AND last_order_at >  date(:run_date, '-' || :max_days || ' days')
