-- The latest Qualifio participation of each participant, with Qualifio's variable names:
-- the `qualifio` preset maps them to Actito's attributes (firstname -> firstName, birthday -> birthDate,
-- gender -> sex, actito_footballTeam -> footballTeam, optin_newsletter -> subscription Newsletter ...).
SELECT firstname, lastname, email, address, number, box, zip, locality, country, birthday, gender,
       phone, actito_footballTeam, optin_newsletter, optin_partners
FROM (
    SELECT p.*, ROW_NUMBER() OVER (PARTITION BY email ORDER BY participated_at DESC, participation_id DESC) AS latest
    FROM qualifio_participations AS p
) AS ranked
WHERE latest = 1
ORDER BY email
