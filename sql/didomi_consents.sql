-- The latest consent state of each user from Didomi's events; organization_user_id is the
-- e-mail address Actito knows the profile by. As Didomi's integration does, the user's metadata goes to
-- the profile attributes of the same name: every other column (here the language, and updated_at, which
-- the demo table has no attribute for: listed by `actito check` and the run, not sent) and the properties
-- of the JSON column `metadata` (loyaltyTier and gdprConsent are attributes, favouriteShop is not).
SELECT organization_user_id, consent_newsletter, consent_partners, consent_promotions,
       preferred_language AS motherLanguage, updated_at, metadata
FROM didomi_consents
ORDER BY organization_user_id
