-- The legacy application's tables, as it has them. Created only where missing: on a database the
-- legacy application already runs on, this migration changes nothing.

CREATE TABLE IF NOT EXISTS products (
    id          VARCHAR PRIMARY KEY,
    name        TEXT,
    category    TEXT,
    brand       TEXT,
    price       NUMERIC(10, 2),
    updated_at  TIMESTAMP
);

CREATE TABLE IF NOT EXISTS user_activity (
    id                  UUID PRIMARY KEY,
    user_id             VARCHAR NOT NULL,
    activity_type       VARCHAR NOT NULL,  -- VIEW_PRODUCT, CLICK, SEARCH, ADD_TO_CART, PURCHASE
    product_id          VARCHAR,
    activity_timestamp  TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS user_activity_user_time ON user_activity (user_id, activity_timestamp);

CREATE TABLE IF NOT EXISTS cart_items (
    user_id     VARCHAR NOT NULL,
    product_id  VARCHAR NOT NULL,
    quantity    INTEGER NOT NULL,
    unit_price  NUMERIC(10, 2),
    updated_at  TIMESTAMP,
    PRIMARY KEY (user_id, product_id)
);

CREATE TABLE IF NOT EXISTS orders (
    id          BIGSERIAL PRIMARY KEY,
    user_id     VARCHAR NOT NULL,
    product_id  VARCHAR NOT NULL,
    quantity    INTEGER NOT NULL,
    amount      NUMERIC(10, 2) NOT NULL,
    status      VARCHAR NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
