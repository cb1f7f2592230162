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
