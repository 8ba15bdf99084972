-- The latest Qualifio participation of each participant, with Qualifio's variable names:
-- the `qualifio` preset maps them to Actito's attributes (firstname -> firstName, birthday -> birthDate,
-- gender -> sex, actito_footballTeam -> footballTeam, optin_newsletter -> subscription Newsletter ...).
-- The campaign fields source / updateSource / way (campaign ID) / date are how the profile was collected:
-- they become the import's dataCollection (the latest participation's when a file holds several campaigns).
-- completed: whether the participant ever finished a campaign; with incomplete_participations = false (the
-- activation's option, as in Qualifio's integration) those who never did are left out, not rejected.
SELECT firstname, lastname, email, address, number, box, zip, locality, country, birthday, gender,
       phone, actito_footballTeam, optin_newsletter, optin_partners,
       'Qualifio' AS source, 'Qualifio' AS updateSource, campaign_id AS way, participated_at AS date,
       ever_completed AS completed
FROM (
    SELECT p.*, ROW_NUMBER() OVER (PARTITION BY email ORDER BY participated_at DESC, participation_id DESC) AS latest,
           MAX(completed) OVER (PARTITION BY email) AS ever_completed
    FROM qualifio_participations AS p
) AS ranked
WHERE latest = 1
ORDER BY email
