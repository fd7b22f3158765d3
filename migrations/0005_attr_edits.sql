-- Server properties a plan changes besides the bytes: per resource, a JSON list of attribute
-- edits ({"name", "old_sha256", "new" (base64 raw value)}), e.g. the originator / recipient hrefs
-- of inbox items. NULL when the plan changes no attribute of the resource. A resource whose only
-- change is an attribute has new_sha256 = old_sha256.

ALTER TABLE plan_resources ADD COLUMN attr_edits TEXT;
