-- The latest consent state of each user from Didomi's events; organization_user_id is the
-- e-mail address Actito knows the profile by. Metadata columns (here the language) are sent as
-- profile attributes of the same name, as Didomi's integration does.
SELECT organization_user_id, consent_newsletter, consent_partners, consent_promotions,
       preferred_language AS motherLanguage
FROM didomi_consents
ORDER BY organization_user_id
