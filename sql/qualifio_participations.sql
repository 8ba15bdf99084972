-- Every Qualifio participation as an interaction of its participant (campaign fields of Qualifio's
-- Actito integration), participated in since :since_days days before the run date.
SELECT participation_id AS participationId,
       email,
       'Qualifio' AS source,
       'Qualifio' AS updateSource,
       campaign_id AS way,
       participated_at AS date,
       campaign_title AS surveyName,
       campaign_type AS surveyType,
       substr(participated_at, 1, 10) AS surveyDate,
       language AS motherLanguage,
       device AS deviceName,
       user_agent AS userAgent,
       completed                -- read by the preset's incomplete_participations option, never sent
FROM qualifio_participations
WHERE participated_at >= date(:run_date, '-' || :since_days || ' days')
ORDER BY participation_id
