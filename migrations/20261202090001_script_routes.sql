-- Custom HTTP routes (`GET /users/:id`) belong to a script version, so a
-- rollback brings back the routes of the version it activates and deleting
-- the script (its versions) frees them. Normalised strings, as declared.
ALTER TABLE script_versions ADD COLUMN routes JSONB NOT NULL DEFAULT '[]';
