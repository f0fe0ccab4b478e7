-- Lifecycle plans find PHI candidates by last activity (the last medical encounter, or the
-- link's creation when it has none) and evaluate them under the policy in force, so that a
-- policy change takes effect in plans before it is applied to the stored instants.
CREATE INDEX patient_links_activity ON patient_links (coalesce(last_medical_encounter_at, created_at));
