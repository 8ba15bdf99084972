-- The latest Qualifio participation of each participant, as an OpenField profile (Qualifio's
-- variable names; etl.openfield.payload converts them: gender M/F -> H/F, civility Mr/Mme -> M/MME,
-- birthday -> DDMMYYYY, country BE -> BEL, optin_newsletter -> a Services entry dated participated_at).
-- password is selected on purpose, to show that it is dropped with a warning and never sent.
SELECT email, firstname, lastname, address, number, zip AS zipcode, locality, country, birthday,
       gender, civility, language, participated_at, optin_newsletter, optin_partners, password
FROM (
    SELECT p.*, ROW_NUMBER() OVER (PARTITION BY email ORDER BY participated_at DESC, participation_id DESC) AS latest
    FROM qualifio_participations AS p
) AS ranked
WHERE latest = 1
ORDER BY email
