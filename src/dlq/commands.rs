//! `persona dlq list|replay`: printing for people (or JSON lines for scripts).

use super::inspect::{self, DeadLetter};
use super::{DeadLetters, DlqError};
use crate::config::KafkaConfig;

/// Which dead letters to re-drive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    All,
    Offsets(Vec<i64>),
}

async fn read(config: &KafkaConfig, from: i64) -> Result<Vec<DeadLetter>, DlqError> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || inspect::read(&config, from))
        .await
        .map_err(|e| DlqError::Join(e.to_string()))?
}

fn source(letter: &DeadLetter) -> String {
    let unknown = || "?".to_string();
    format!(
        "{}/{}/{}",
        letter.source_topic,
        letter.source_partition.map_or_else(unknown, |p| p.to_string()),
        letter.source_offset.map_or_else(unknown, |o| o.to_string())
    )
}

pub async fn list(config: &KafkaConfig, from: i64, json: bool) -> Result<(), DlqError> {
    let letters = read(config, from).await?;
    if json {
        for letter in &letters {
            println!("{}", serde_json::to_string(letter).unwrap_or_default());
        }
        return Ok(());
    }
    println!("{} dead letter(s) in {}", letters.len(), config.dlq_topic);
    for letter in &letters {
        let again = letter
            .replay_of
            .as_ref()
            .map_or(String::new(), |of| format!("  (failed again when re-driven from {of})"));
        println!(
            "#{:<6} {}  from {}  {}: {}{again}",
            letter.offset,
            letter.failed_at,
            source(letter),
            letter.kind,
            letter.error
        );
        let value = letter.payload.as_deref().unwrap_or("<null>");
        println!("        value: {}", inspect::preview(value, 160));
    }
    Ok(())
}

pub async fn replay(
    config: &KafkaConfig,
    selection: Selection,
    dry_run: bool,
) -> Result<(), DlqError> {
    let from = match &selection {
        Selection::All => 0,
        Selection::Offsets(offsets) => offsets.iter().copied().min().unwrap_or(0),
    };
    let letters = read(config, from).await?;
    let chosen: Vec<DeadLetter> = match &selection {
        Selection::All => letters,
        Selection::Offsets(offsets) => {
            let missing: Vec<i64> = offsets
                .iter()
                .copied()
                .filter(|offset| !letters.iter().any(|letter| letter.offset == *offset))
                .collect();
            if !missing.is_empty() {
                return Err(DlqError::NoSuchOffsets { topic: config.dlq_topic.clone(), missing });
            }
            letters.into_iter().filter(|letter| offsets.contains(&letter.offset)).collect()
        }
    };
    for letter in &chosen {
        let verb = if dry_run { "would re-drive" } else { "re-driving" };
        println!("{verb} #{} -> {}", letter.offset, source(letter));
    }
    if !dry_run {
        let sent = inspect::replay(&DeadLetters::new(config)?, &chosen).await?;
        println!("{sent} dead letter(s) re-driven");
    }
    Ok(())
}
