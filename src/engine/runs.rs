//! Following Debezium's snapshot runs through a batch: each change labelled with its table's
//! newest run, and the runs the batch began, for every table of the run's connector.

use crate::features::{FeatureSet, SourceChange};
use crate::store::Runs;

/// Labels each change with its table's newest snapshot run at that change (`runs`, as
/// stored, advanced by the reads of newer runs in the batch), and returns the runs the batch
/// began. A run covers every table of its connector, also those it finds no row of.
pub(super) fn follow(
    features: &FeatureSet,
    topics: &[String],
    changes: &mut [SourceChange],
    connectors: &[Option<String>],
    mut runs: Runs,
) -> Runs {
    let mut began = Runs::new();
    for (change, connector) in changes.iter_mut().zip(connectors) {
        let table = change.table.name();
        if let Some(read) = change.snapshot
            && runs.get(table).is_none_or(|current| current.run < read.start.run)
        {
            let covered = connector.as_deref().map(|name| sources_of(features, topics, name));
            for covered in covered.unwrap_or_default().into_iter().chain([table.to_string()]) {
                if runs.get(&covered).is_none_or(|current| current.run < read.start.run) {
                    runs.insert(covered.clone(), read.start);
                    began.insert(covered, read.start);
                }
            }
        }
        change.run = runs.get(table).copied();
    }
    began
}

/// The declared sources whose topics (of `topics`) are under `connector`'s prefix (Debezium names
/// topics `<topic.prefix>.<schema>.<table>`).
fn sources_of(set: &FeatureSet, topics: &[String], connector: &str) -> Vec<String> {
    let prefix = format!("{connector}.");
    topics
        .iter()
        // `<schema>.<table>` after the prefix: not a topic of another connector whose prefix
        // starts with this one's.
        .filter(|topic| {
            topic.strip_prefix(&prefix).is_some_and(|rest| rest.matches('.').count() == 1)
        })
        .filter_map(|topic| set.source_of_topic(topic))
        .map(|source| source.name.name().to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::sources_of;
    use crate::features::FeatureSet;

    #[test]
    fn a_connector_covers_the_source_tables_under_its_prefix() {
        let topics: Vec<String> = [
            "shop.public.user_activity",
            "shop.public.orders",
            "shopping.public.cart_items",
            "__debezium-heartbeat.shop",
            "shop.public.audit_log",
        ]
        .map(String::from)
        .to_vec();
        let set = FeatureSet::load(None).expect("shipped definitions");
        assert_eq!(sources_of(&set, &topics, "shop"), ["user_activity", "orders"]);
        assert!(sources_of(&set, &topics, "other").is_empty());
    }
}
