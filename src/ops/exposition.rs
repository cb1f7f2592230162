//! Reading persona's own Prometheus exposition back: the dashboard is drawn from the same
//! series ops scrape, so the two never disagree.

use std::collections::BTreeMap;

/// One sample line: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Series {
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }
}

/// Parses the text exposition format; comments and malformed lines are skipped.
pub fn parse(text: &str) -> Vec<Series> {
    text.lines().filter(|line| !line.starts_with('#')).filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Series> {
    let line = line.trim();
    if line.is_empty() {
        return None;
    }
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_string();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(inner)?;
        labels = parsed;
        rest = after;
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    Some(Series { name, labels, value })
}

/// `a="x",b="y\"z"}` → labels and what follows the closing brace.
fn parse_labels(mut text: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    loop {
        text = text.trim_start_matches([',', ' ']);
        if let Some(after) = text.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = text.find('=')?;
        let key = text[..eq].trim().to_string();
        text = text[eq + 1..].strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = text.char_indices();
        let end = loop {
            let (index, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break index,
                other => value.push(other),
            }
        };
        labels.insert(key, value);
        text = &text[end + 1..];
    }
}

/// Sum of the series named `name` whose labels include every `(key, value)` of `filter`.
pub fn sum(series: &[Series], name: &str, filter: &[(&str, &str)]) -> f64 {
    series
        .iter()
        .filter(|s| s.name == name && filter.iter().all(|(k, v)| s.label(k) == *v))
        .map(|s| s.value)
        .sum::<f64>()
        // An empty float sum is -0.0, which would print as "-0".
        + 0.0
}

/// A histogram's cumulative bucket counts (upper bound → count), summed over label sets.
pub fn buckets(series: &[Series], histogram: &str) -> Vec<(f64, f64)> {
    let bucket_name = format!("{histogram}_bucket");
    let mut by_bound: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    for s in series.iter().filter(|s| s.name == bucket_name) {
        let Some(bound) = s.labels.get("le").and_then(|le| match le.as_str() {
            "+Inf" => Some(f64::INFINITY),
            other => other.parse::<f64>().ok(),
        }) else {
            continue;
        };
        let entry = by_bound.entry(bound.to_bits()).or_insert((bound, 0.0));
        entry.1 += s.value;
    }
    let mut buckets: Vec<(f64, f64)> = by_bound.into_values().collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets
}

/// The `q` quantile of the observations between two snapshots of cumulative buckets, linearly
/// interpolated within the bucket it falls in (as PromQL's `histogram_quantile`); `None`
/// without observations.
pub fn quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<f64> {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|(bound, count)| {
            let earlier = before
                .iter()
                .find(|(b, _)| b.to_bits() == bound.to_bits())
                .map_or(0.0, |(_, c)| *c);
            (*bound, (count - earlier).max(0.0))
        })
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower_bound = 0.0;
    let mut lower_count = 0.0;
    for (bound, count) in &delta {
        if *count >= rank {
            if bound.is_infinite() {
                return Some(lower_bound);
            }
            let in_bucket = count - lower_count;
            let fraction = if in_bucket > 0.0 { (rank - lower_count) / in_bucket } else { 1.0 };
            return Some(lower_bound + (bound - lower_bound) * fraction);
        }
        lower_bound = *bound;
        lower_count = *count;
    }
    Some(lower_bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# TYPE persona_events_consumed_total counter
persona_events_consumed_total{topic="persona.public.user_activity",op="c"} 7
persona_events_consumed_total{topic="persona.public.orders",op="c"} 3
persona_http_request_duration_seconds_count{method="GET",route="/api/v1/users/{user_id}/features",status="200"} 4
persona_odd{v="a \"quoted\", comma"} 1.5
persona_freshness_seconds_bucket{le="0.01"} 2
persona_freshness_seconds_bucket{le="0.05"} 6
persona_freshness_seconds_bucket{le="+Inf"} 8
persona_catalog_products 12
"#;

    #[test]
    fn parses_names_labels_and_values() {
        let series = parse(TEXT);
        assert_eq!(sum(&series, "persona_events_consumed_total", &[]), 10.0);
        assert_eq!(
            sum(&series, "persona_events_consumed_total", &[("topic", "persona.public.orders")]),
            3.0
        );
        let route = series.iter().find(|s| s.name.ends_with("_count")).expect("count");
        assert_eq!(route.label("route"), "/api/v1/users/{user_id}/features");
        let odd = series.iter().find(|s| s.name == "persona_odd").expect("odd");
        assert_eq!(odd.label("v"), "a \"quoted\", comma");
        assert_eq!(sum(&series, "persona_catalog_products", &[]), 12.0);
        assert_eq!(format!("{}", sum(&series, "persona_absent", &[])), "0");
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket_of_the_delta() {
        let after = buckets(&parse(TEXT), "persona_freshness_seconds");
        assert_eq!(after, vec![(0.01, 2.0), (0.05, 6.0), (f64::INFINITY, 8.0)]);
        // 8 observations: the median (rank 4) is halfway through the 0.01–0.05 bucket.
        let median = quantile(&[], &after, 0.5).expect("observations");
        assert!((median - 0.03).abs() < 1e-9, "{median}");
        // Only what happened between the snapshots counts: 2 more, both under 10 ms.
        let later: Vec<(f64, f64)> = after.iter().map(|(b, c)| (*b, c + 2.0)).collect();
        let recent = quantile(&after, &later, 0.99).expect("observations");
        assert!(recent <= 0.01, "{recent}");
        assert_eq!(quantile(&after, &after, 0.5), None);
    }
}
