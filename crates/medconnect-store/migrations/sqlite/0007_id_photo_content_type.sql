-- The media type of an ID photo uploaded through the API (image/jpeg or image/png), which
-- the API serves the photo with. Photos stored before this version, and photos that
-- `Store::add_id_photo` stores, have none.
ALTER TABLE id_photos ADD COLUMN content_type TEXT;
