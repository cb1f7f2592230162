-- What persona needs of the legacy database for change data capture. This is the only part an
-- existing database needs (see README, "Existing database").

-- Events of these tables are keyed by user_id (per-user order within one partition), which is not
-- their primary key: with the default replica identity a DELETE's before image would hold only the
-- primary key, so the event would arrive without its user. FULL also gives updates a complete
-- before image. cart_items is keyed by user_id too (part of its key) and needs full before images
-- for current-state aggregates.
ALTER TABLE user_activity REPLICA IDENTITY FULL;
ALTER TABLE orders REPLICA IDENTITY FULL;
ALTER TABLE cart_items REPLICA IDENTITY FULL;

-- Debezium runs with publication.autocreate.mode=disabled and reads this publication.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'persona_cdc') THEN
        CREATE PUBLICATION persona_cdc FOR TABLE products, user_activity, cart_items, orders;
    END IF;
END
$$;
