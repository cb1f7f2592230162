//! Validation of feature definitions: what is accepted, and how errors read.

use rust_decimal::Decimal;

use super::*;

fn one(feature: &str) -> Result<FeatureSet, DefinitionError> {
    FeatureSet::parse(&format!("[[feature]]\n{feature}"), "test")
}

fn error(feature: &str) -> String {
    one(feature).expect_err("must be rejected").to_string()
}

#[test]
fn shipped_definitions_are_valid() {
    let set = FeatureSet::load(None).expect("valid");
    assert!(set.get("last_viewed_product").is_some());
    assert!(set.get("popularity_percentile").is_some());
}

#[test]
fn errors_name_the_feature_and_the_field() {
    let message = error(
        "name = \"x\"\nentity = \"user\"\nsource = \"user_activity\"\naggregation = \"count\"\nwindow = \"31d\"",
    );
    assert!(message.contains("feature `x`") && message.contains("`window`"), "{message}");
    let message = error(
        "name = \"x\"\nentity = \"user\"\nsource = \"user_activity\"\naggregation = \"sum\"\nvalue = \"activity_type\"",
    );
    assert!(message.contains("`value`") && message.contains("numeric"), "{message}");
    let message = error(
        "name = \"x\"\nentity = \"user\"\nsource = \"orders\"\naggregation = \"count\"\nfilter = { colour = \"red\" }",
    );
    assert!(message.contains("`filter`") && message.contains("colour"), "{message}");
    let message =
        error("name = \"x\"\nentity = \"user\"\nsource = \"carts\"\naggregation = \"count\"");
    assert!(message.contains("`source`"), "{message}");
    let message = error(
        "name = \"x\"\nentity = \"user\"\nsource = \"orders\"\naggregation = \"top_k\"\nvalue = \"product.brand\"",
    );
    assert!(message.contains("`k`"), "{message}");
    let message = error(
        "name = \"x\"\nentity = \"user\"\nsource = \"orders\"\naggregation = \"count\"\nwindow = \"90s\"",
    );
    assert!(message.contains("whole number of minutes"), "{message}");
}

#[test]
fn unknown_keys_and_duplicates_are_rejected() {
    let message = error(
        "name = \"x\"\nentity = \"user\"\nsource = \"orders\"\naggregation = \"count\"\nwindw = \"1m\"",
    );
    assert!(message.contains("windw"), "{message}");
    let twice = "[[feature]]\nname = \"x\"\nentity = \"user\"\nsource = \"orders\"\naggregation = \"count\"\n";
    let message = FeatureSet::parse(&format!("{twice}{twice}"), "t").expect_err("dup").to_string();
    assert!(message.contains("defined twice"), "{message}");
}

#[test]
fn windows_are_sixty_buckets() {
    let set = one(
        "name = \"x\"\nentity = \"user\"\nsource = \"orders\"\naggregation = \"count\"\nwindow = \"1h\"",
    )
    .expect("valid");
    let window = set.features[0].window.expect("windowed");
    assert_eq!(window.bucket_us, 60_000_000);
    assert!(window.contains(3_600_000_000 * 10, 3_600_000_000 * 9 + 60_000_000));
    assert!(!window.contains(3_600_000_000 * 10, 3_600_000_000 * 9 + 59_999_999));
}

#[test]
fn bands_label_values() {
    let set = one(
        "name = \"x\"\nentity = \"user\"\nsource = \"orders\"\naggregation = \"histogram\"\nvalue = \"product.price\"\nbands = [25, 50]",
    )
    .expect("valid");
    let feature = &set.features[0];
    assert_eq!(feature.band_of(Decimal::new(2499, 2)), "<25");
    assert_eq!(feature.band_of(Decimal::new(25, 0)), "25-50");
    assert_eq!(feature.band_of(Decimal::new(50, 0)), "50+");
}

#[test]
fn fingerprint_follows_the_definitions() {
    let a = "name = \"x\"\nentity = \"user\"\nsource = \"orders\"\naggregation = \"count\"\n";
    let b = format!("{a}window = \"1h\"\n");
    assert_ne!(one(a).expect("ok").fingerprint, one(&b).expect("ok").fingerprint);
    assert_eq!(one(a).expect("ok").fingerprint, one(a).expect("ok").fingerprint);
}

/// A legacy schema of its own: the declarations and one feature over them.
fn declared(source: &str, dimension: &str, feature: &str) -> Result<FeatureSet, DefinitionError> {
    FeatureSet::parse(&format!("[[source]]\n{source}\n{dimension}\n[[feature]]\n{feature}"), "t")
}

const BEHAVIOR: &str = r#"name = "behavior"
table = "legacy.t_user_behavior"
key = ["behavior_id"]
time = "gmt_create"
entities = { user = "uid", product = "item_code" }
columns = { behavior_id = "bigint", uid = "bigint", behavior = "smallint", item_code = "varchar", gmt_create = "timestamp" }
map = { behavior = { 1 = "VIEW_PRODUCT" } }"#;

const ITEM: &str = r#"[[dimension]]
name = "item"
table = "legacy.t_item"
key = "code"
entity = "product"
attributes = { title = "text", cat = "varchar", list_price = "numeric" }
roles = { category = "cat", price = "list_price" }"#;

const VIEWS: &str = r#"name = "views"
entity = "user"
source = "behavior"
filter = { behavior = "VIEW_PRODUCT" }
aggregation = "count"
window = "1h""#;

#[test]
fn declared_sources_replace_the_reference_schema() {
    let set = declared(BEHAVIOR, ITEM, VIEWS).expect("valid");
    assert_eq!(set.sources.len(), 1);
    let source = set.source(set.features[0].table);
    assert_eq!((source.schema, source.table), ("legacy", "t_user_behavior"));
    assert_eq!(source.entity_column(Entity::USER), Some("uid"));
    assert_eq!(source.keyed_by, Entity::USER);
    // A mapped column holds names.
    assert_eq!(source.column("behavior"), Some(("behavior", crate::features::ColumnType::Text)));
    let dimension = set.item_dimension().expect("declared");
    assert_eq!((dimension.key, dimension.roles.category), ("code", Some("cat")));
    // The reference schema's sources are not there.
    let message =
        declared(BEHAVIOR, ITEM, &VIEWS.replace("\"behavior\"\nfilter", "\"orders\"\nfilter"))
            .expect_err("orders is not declared")
            .to_string();
    assert!(message.contains("`source`") && message.contains("behavior"), "{message}");
}

#[test]
fn a_file_without_declarations_reads_the_reference_schema() {
    let set = one("name = \"x\"\nentity = \"user\"\nsource = \"orders\"\naggregation = \"count\"")
        .expect("valid");
    let shipped = FeatureSet::load(None).expect("valid");
    assert_eq!(set.sources, shipped.sources);
    assert_eq!(set.dimensions, shipped.dimensions);
    assert_eq!(set.sources.len(), 3);
}

#[test]
fn declaration_errors_name_the_source_or_dimension_and_the_field() {
    for (source, dimension, feature, names) in [
        (
            BEHAVIOR.replace("\"bigint\", uid", "\"bignum\", uid"),
            ITEM.into(),
            VIEWS.into(),
            ["source `behavior`", "`columns`"],
        ),
        (
            BEHAVIOR.replace("time = \"gmt_create\"", "time = \"uid\""),
            ITEM.into(),
            VIEWS.into(),
            ["source `behavior`", "`time`"],
        ),
        (
            BEHAVIOR.replace("key = [\"behavior_id\"]", "key = [\"id\"]"),
            ITEM.into(),
            VIEWS.into(),
            ["source `behavior`", "`key`"],
        ),
        (
            BEHAVIOR.replace("user = \"uid\"", "shopper = \"uid\""),
            ITEM.into(),
            VIEWS.into(),
            ["source `behavior`", "`entities`"],
        ),
        (
            BEHAVIOR.replace("{ behavior = {", "{ uid = {"),
            ITEM.into(),
            VIEWS.into(),
            ["source `behavior`", "`map`"],
        ),
        (
            BEHAVIOR.replace("legacy.t_user_behavior", "a.b.c"),
            ITEM.into(),
            VIEWS.into(),
            ["source `behavior`", "`table`"],
        ),
        (
            BEHAVIOR.into(),
            ITEM.replace("list_price\" }", "title\" }"),
            VIEWS.into(),
            ["dimension `item`", "`roles`"],
        ),
        (
            BEHAVIOR.into(),
            ITEM.replace("entity = \"product\"", "entity = \"warehouse\""),
            VIEWS.into(),
            ["dimension `item`", "`entity`"],
        ),
        (
            BEHAVIOR.into(),
            ITEM.into(),
            VIEWS
                .replace("entity = \"user\"", "entity = \"product\"")
                .replace("\"count\"", "\"sum\"\nvalue = \"item.colour\""),
            ["feature `views`", "`value`"],
        ),
        (
            BEHAVIOR.replace(", product = \"item_code\"", ""),
            ITEM.into(),
            VIEWS.replace("entity = \"user\"", "entity = \"product\""),
            ["feature `views`", "`entity`"],
        ),
        (
            BEHAVIOR.replace("colmns", "x").replace("columns", "colums"),
            ITEM.into(),
            VIEWS.into(),
            ["colums", ""],
        ),
    ] {
        let message =
            declared(&source, &dimension, &feature).expect_err("must be rejected").to_string();
        assert!(names.iter().all(|name| message.contains(name)), "{names:?}: {message}");
    }
}

#[test]
fn a_join_needs_the_source_to_name_the_dimensions_entity() {
    let source = BEHAVIOR.replace(", product = \"item_code\"", "");
    let feature = r#"name = "cats"
entity = "user"
source = "behavior"
aggregation = "histogram"
value = "item.cat"
window = "1h""#;
    let message = declared(&source, ITEM, feature).expect_err("no product id").to_string();
    assert!(message.contains("`value`") && message.contains("names no product id"), "{message}");
    assert!(declared(BEHAVIOR, ITEM, feature).is_ok());
}

#[test]
fn the_legacy_shop_of_the_tests_is_declared_validly() {
    let text = include_str!("../../../tests/fixtures/legacy-shop/features.toml");
    let set = FeatureSet::parse(text, "legacy-shop").expect("valid");
    assert_eq!(set.sources.len(), 2);
    assert_eq!(set.item_dimension().map(|d| d.key), Some("code"));
}

#[test]
fn a_topic_names_its_declared_source_whatever_the_source_is_called() {
    let text = include_str!("../../../tests/fixtures/legacy-shop/features.toml");
    let set = FeatureSet::parse(text, "legacy-shop").expect("valid");
    let source = |topic: &str| set.source_of_topic(topic).map(|source| source.name.name());
    assert_eq!(source("shop.legacy_shop.t_user_behavior"), Some("behavior"));
    // Debezium's topic prefix may hold dots of its own.
    assert_eq!(source("eu.shop.legacy_shop.t_trade"), Some("trade"));
    assert_eq!(source("shop.other_schema.t_trade"), None);
    assert_eq!(source("shop.legacy_shop.t_store"), None, "a dimension is not a source");
    assert_eq!(source("t_trade"), None);
}

#[test]
fn recommendation_roles_default_to_the_shipped_features_and_name_their_problems() {
    let shipped = FeatureSet::load(None).expect("valid");
    assert_eq!(shipped.recommendations.trending.as_deref(), Some("trending_score"));
    assert!(shipped.recommendations.missing().is_empty());
    // A file without them: every role unplayed, and no error.
    let set = declared(BEHAVIOR, ITEM, VIEWS).expect("valid");
    assert_eq!(set.recommendations.missing().len(), 9);
    let with = |roles: &str| {
        FeatureSet::parse(
            &format!(
                "[[source]]\n{BEHAVIOR}\n{ITEM}\n[[feature]]\n{VIEWS}\n[recommendations]\n{roles}"
            ),
            "t",
        )
    };
    let message = with("interest = \"views\"").expect_err("a count is not a histogram").to_string();
    assert!(message.contains("`recommendations`") && message.contains("histogram"), "{message}");
    let message = with("trending = \"nope\"").expect_err("undefined").to_string();
    assert!(message.contains("`trending`") && message.contains("not defined"), "{message}");
    let message = with("hotness = \"views\"").expect_err("no such role").to_string();
    assert!(message.contains("`hotness` is not a role"), "{message}");
    let cats = "[[feature]]\nname = \"cats\"\nentity = \"user\"\nsource = \"behavior\"\naggregation = \"histogram\"\nvalue = \"item.cat\"\nwindow = \"1h\"";
    let set = FeatureSet::parse(
        &format!("[[source]]\n{BEHAVIOR}\n{ITEM}\n[[feature]]\n{VIEWS}\n{cats}\n[recommendations]\ninterest = \"cats\""),
        "t",
    )
    .expect("valid");
    assert_eq!(set.recommendations.interest.as_deref(), Some("cats"));
}

#[test]
fn entities_are_declared_with_their_ids_and_roles() {
    let entities = "[[entity]]\nname = \"customer\"\nid = \"integer\"\nrole = \"shopper\"\n\n[[entity]]\nname = \"sku\"\nrole = \"item\"\n\n[[entity]]\nname = \"store\"\nid = \"integer\"\n";
    let source = BEHAVIOR.replace(
        "{ user = \"uid\", product = \"item_code\" }",
        "{ customer = \"uid\", sku = \"item_code\" }",
    );
    let item = ITEM.replace("entity = \"product\"", "entity = \"sku\"");
    let views = VIEWS.replace("entity = \"user\"", "entity = \"customer\"");
    let file = |entities: &str, views: &str| {
        FeatureSet::parse(
            &format!("{entities}\n[[source]]\n{source}\n{item}\n[[feature]]\n{views}"),
            "t",
        )
    };
    let set = file(entities, &views).expect("valid");
    assert_eq!((set.shopper.label(), set.item.label()), ("customer", "sku"));
    assert_eq!(set.entity("store").map(|e| e.id), Some(IdKind::Integer));
    assert_eq!(set.entity("sku").map(|e| e.id), Some(IdKind::Text));
    // Rows are keyed by the shopper unless told otherwise.
    assert_eq!(set.sources[0].keyed_by, set.shopper);

    let message = file(entities, VIEWS).expect_err("user is not declared").to_string();
    assert!(message.contains("feature `views`") && message.contains("`entity`"), "{message}");
    let without_item = entities.replace("role = \"item\"\n", "");
    let message = file(&without_item, &views).expect_err("no item").to_string();
    assert!(message.contains("`entity`") && message.contains("role = \"item\""), "{message}");
    let twice = format!("{entities}\n[[entity]]\nname = \"store\"\n");
    let message = file(&twice, &views).expect_err("twice").to_string();
    assert!(message.contains("entity `store`") && message.contains("declared twice"), "{message}");
    let keyed = ITEM.replace("entity = \"product\"", "entity = \"customer\"");
    let message = FeatureSet::parse(
        &format!("{entities}\n[[source]]\n{source}\n{keyed}\n[[feature]]\n{views}"),
        "t",
    )
    .expect_err("roles are the item's")
    .to_string();
    assert!(message.contains("dimension `item`") && message.contains("`roles`"), "{message}");
}

#[test]
fn every_entity_may_have_a_dimension_of_its_own() {
    let entities = "[[entity]]\nname = \"user\"\nrole = \"shopper\"\n\n[[entity]]\nname = \"product\"\nrole = \"item\"\n\n[[entity]]\nname = \"store\"\nid = \"integer\"\n";
    let source = BEHAVIOR
        .replace("product = \"item_code\" }", "product = \"item_code\", store = \"shop\" }")
        .replace("gmt_create = \"timestamp\"", "gmt_create = \"timestamp\", shop = \"integer\"");
    let stores = "[[dimension]]\nname = \"outlet\"\ntable = \"legacy.t_store\"\nkey = \"store_id\"\nentity = \"store\"\nattributes = { city = \"text\" }";
    let feature = "name = \"cities\"\nentity = \"user\"\nsource = \"behavior\"\naggregation = \"histogram\"\nvalue = \"outlet.city\"\nwindow = \"1h\"";
    let file = |dimensions: &str| {
        FeatureSet::parse(
            &format!("{entities}\n[[source]]\n{source}\n{dimensions}\n[[feature]]\n{feature}"),
            "t",
        )
    };
    let set = file(&format!("{ITEM}\n{stores}")).expect("valid");
    assert_eq!(set.dimensions.len(), 2);
    assert_eq!(set.item_dimension().map(|d| d.name), Some("item"));
    assert_eq!(
        set.features[0].value,
        ValueExpr::Attribute(Entity::new("store"), "city"),
        "joined through the store's dimension"
    );
    let twice = stores.replace("outlet", "branch").replace("t_store", "t_branch");
    let message =
        file(&format!("{ITEM}\n{stores}\n{twice}")).expect_err("two for stores").to_string();
    assert!(
        message.contains("dimension `branch`") && message.contains("another dimension"),
        "{message}"
    );
    let with_roles = format!("{stores}\nroles = {{ category = \"city\" }}");
    let message = file(&format!("{ITEM}\n{with_roles}")).expect_err("roles of a store").to_string();
    assert!(message.contains("dimension `outlet`") && message.contains("`roles`"), "{message}");
}
