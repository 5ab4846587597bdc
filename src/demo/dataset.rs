//! The demo's synthetic shop: users, items and a stream of timestamped interactions, generated
//! deterministically from a seed (ChaCha8, whose output rand_chacha keeps stable across releases).
//!
//! The structure a recommender can learn: items belong to categories of unequal size and are
//! Zipf-popular within them; each user has two favourite categories, a heavy-tailed activity level,
//! and clicks and buys far more often in the categories they like. Events are views, some followed by
//! a click and a few by a purchase, spread over `days` days ending at `end`.

use std::sync::Arc;

use chrono::{NaiveDateTime, TimeDelta};
use datafusion::arrow::array::{
    ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use rand::distr::Distribution;
use rand::distr::weighted::WeightedIndex;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};

pub const CATEGORIES: [&str; 20] = [
    "books",
    "electronics",
    "fashion",
    "home",
    "sports",
    "toys",
    "beauty",
    "games",
    "music",
    "garden",
    "kitchen",
    "outdoors",
    "pets",
    "office",
    "auto",
    "health",
    "grocery",
    "tools",
    "travel",
    "art",
];
const COUNTRIES: [(&str, f64); 8] = [
    ("US", 0.30),
    ("DE", 0.12),
    ("GB", 0.11),
    ("FR", 0.10),
    ("BR", 0.10),
    ("IN", 0.12),
    ("JP", 0.08),
    ("ES", 0.07),
];
/// Rows per record batch written.
const BATCH_ROWS: usize = 64 * 1024;

/// What to generate. Equal specs give equal data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub users: u32,
    pub items: u32,
    pub events: u64,
    pub days: u32,
    /// The interactions end at this time (UTC).
    pub end: NaiveDateTime,
    pub seed: u64,
}

impl Spec {
    /// The dataset `models/demo/` was trained on, ending at `end` (the end moves the timestamps only;
    /// the users, items and who did what when, relative to the end, are the same).
    pub fn default_for(end: NaiveDateTime) -> Self {
        Self {
            users: 10_000,
            items: 2_000,
            events: 1_000_000,
            days: 90,
            end,
            seed: 42,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let check = |ok: bool, setting: &'static str, message: &str| {
            if ok {
                Ok(())
            } else {
                Err(Error::Config {
                    setting,
                    message: message.into(),
                })
            }
        };
        check(
            self.users >= 10,
            "--users",
            "the demo needs at least 10 users",
        )?;
        check(
            self.items >= 20,
            "--items",
            "the demo needs at least 20 items",
        )?;
        check(
            self.events >= 100,
            "--events",
            "the demo needs at least 100 events",
        )?;
        check(
            (1..=3650).contains(&self.days),
            "--days",
            "must be between 1 and 3650",
        )
    }

    fn start_time(&self) -> NaiveDateTime {
        self.end - TimeDelta::days(i64::from(self.days))
    }
}

/// The catalog and the users' tastes: everything but the events, drawn first from the seed.
pub struct World {
    spec: Spec,
    rng: ChaCha8Rng,
    item_category: Vec<usize>,
    item_price: Vec<f64>,
    item_created: Vec<i64>,
    /// Per category: its items, and a sampler over them by popularity.
    category_items: Vec<(Vec<u32>, WeightedIndex<f64>)>,
    category_weight: WeightedIndex<f64>,
    user_country: Vec<&'static str>,
    user_signup: Vec<i64>,
    user_favourites: Vec<[usize; 2]>,
    user_activity: WeightedIndex<f64>,
}

impl World {
    pub fn new(spec: Spec) -> Result<Self> {
        spec.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
        let category_weights: Vec<f64> = (0..CATEGORIES.len())
            .map(|rank| 1.0 / (rank as f64 + 1.0).powf(0.6))
            .collect();
        let category_weight = weighted(&category_weights)?;
        let start = micros(spec.start_time());

        let items = spec.items as usize;
        // Every category has an item (so each has a sampler); the rest by category size.
        let item_category: Vec<usize> = (0..items)
            .map(|item| {
                if item < CATEGORIES.len() {
                    item
                } else {
                    category_weight.sample(&mut rng)
                }
            })
            .collect();
        let item_price = (0..items)
            .map(|_| (gaussian(&mut rng) * 0.8 + 3.0).exp().clamp(1.0, 5000.0))
            .map(|p| (p * 100.0).round() / 100.0)
            .collect();
        let year = 365 * 86_400 * 1_000_000_i64;
        let item_created = (0..items)
            .map(|_| start - rng.random_range(0..year))
            .collect();
        let mut category_items: Vec<Vec<u32>> = vec![Vec::new(); CATEGORIES.len()];
        for (item, category) in item_category.iter().enumerate() {
            category_items[*category].push(item as u32);
        }
        let category_items = category_items
            .into_iter()
            .map(|members| {
                // Popularity is Zipf over a random order of the category's items.
                let mut ranks: Vec<usize> = (0..members.len()).collect();
                shuffle(&mut ranks, &mut rng);
                let weights: Vec<f64> = ranks.iter().map(|r| 1.0 / (*r as f64 + 1.0)).collect();
                Ok((members, weighted(&weights)?))
            })
            .collect::<Result<Vec<_>>>()?;

        let users = spec.users as usize;
        let countries = weighted(&COUNTRIES.map(|(_, w)| w))?;
        let user_country = (0..users)
            .map(|_| COUNTRIES[countries.sample(&mut rng)].0)
            .collect();
        let two_years = 2 * year;
        let user_signup = (0..users)
            .map(|_| start - rng.random_range(0..two_years))
            .collect();
        let user_favourites = (0..users)
            .map(|_| {
                let first = category_weight.sample(&mut rng);
                let mut second = category_weight.sample(&mut rng);
                while second == first {
                    second = category_weight.sample(&mut rng);
                }
                [first, second]
            })
            .collect();
        let activity: Vec<f64> = (0..users)
            .map(|_| (gaussian(&mut rng) * 1.1).exp())
            .collect();
        let user_activity = weighted(&activity)?;
        Ok(Self {
            spec,
            rng,
            item_category,
            item_price,
            item_created,
            category_items,
            category_weight,
            user_country,
            user_signup,
            user_favourites,
            user_activity,
        })
    }

    pub fn users_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Int64, false),
            Field::new("country", DataType::Utf8, false),
            Field::new("signup_at", timestamp(), false),
        ]))
    }

    pub fn items_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("item_id", DataType::Int64, false),
            Field::new("category", DataType::Utf8, false),
            Field::new("price", DataType::Float64, false),
            Field::new("created_at", timestamp(), false),
        ]))
    }

    pub fn interactions_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Int64, false),
            Field::new("item_id", DataType::Int64, false),
            Field::new("event", DataType::Utf8, false),
            Field::new("ts", timestamp(), false),
        ]))
    }

    pub fn users(&self) -> Result<RecordBatch> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(0..i64::from(self.spec.users))),
            Arc::new(StringArray::from(self.user_country.clone())),
            Arc::new(TimestampMicrosecondArray::from(self.user_signup.clone())),
        ];
        Ok(RecordBatch::try_new(Self::users_schema(), columns)?)
    }

    pub fn items(&self) -> Result<RecordBatch> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(0..i64::from(self.spec.items))),
            Arc::new(StringArray::from_iter_values(
                self.item_category.iter().map(|c| CATEGORIES[*c]),
            )),
            Arc::new(Float64Array::from(self.item_price.clone())),
            Arc::new(TimestampMicrosecondArray::from(self.item_created.clone())),
        ];
        Ok(RecordBatch::try_new(Self::items_schema(), columns)?)
    }

    /// The interactions, in time order (day by day), `BATCH_ROWS` rows per batch; exactly
    /// `spec.events` rows in all. Only one day's events are held at a time.
    pub fn interactions(self) -> Interactions {
        Interactions {
            world: self,
            day: 0,
            written: 0,
            pending: Vec::new(),
        }
    }

    /// One view and what may follow it: a click, then a purchase.
    fn session(&mut self, day_start: i64, out: &mut Vec<Event>) {
        let user = self.user_activity.sample(&mut self.rng);
        let [first, second] = self.user_favourites[user];
        let pick: f64 = self.rng.random();
        let category = if pick < 0.55 {
            first
        } else if pick < 0.80 {
            second
        } else {
            self.category_weight.sample(&mut self.rng)
        };
        let liked = category == first || category == second;
        let (members, popularity) = &self.category_items[category];
        let item = members[popularity.sample(&mut self.rng)];
        let day = 86_400 * 1_000_000_i64;
        let ts = day_start + self.rng.random_range(0..day);
        out.push(Event::new(user, item, "view", ts));
        let click = if liked { 0.24 } else { 0.06 };
        if self.rng.random_bool(click) {
            let at = ts + self.rng.random_range(5_000_000..300_000_000);
            out.push(Event::new(user, item, "click", at));
            let buy = if liked { 0.2 } else { 0.08 };
            if self.rng.random_bool(buy) {
                let at = at + self.rng.random_range(60_000_000..3_600_000_000);
                out.push(Event::new(user, item, "purchase", at));
            }
        }
    }
}

/// Iterator over the interaction batches; see [`World::interactions`].
pub struct Interactions {
    world: World,
    day: u32,
    written: u64,
    pending: Vec<Event>,
}

impl Interactions {
    pub fn total(&self) -> u64 {
        self.world.spec.events
    }

    /// Fills `pending` with the next day's events, in time order.
    fn next_day(&mut self) {
        let spec = &self.world.spec;
        let (events, days) = (spec.events, u64::from(spec.days));
        let day = u64::from(self.day);
        // Days share the events evenly; the last day takes whatever is left.
        let target = if day + 1 == days {
            events
        } else {
            events * (day + 1) / days
        };
        let day_start = micros(spec.start_time()) + i64::from(self.day) * 86_400 * 1_000_000;
        let mut today = Vec::new();
        let mut produced = self.written + self.pending.len() as u64;
        while produced < target {
            let before = today.len();
            self.world.session(day_start, &mut today);
            produced += (today.len() - before) as u64;
        }
        // A session that overshoots the day's share is cut: the total is exact.
        let excess = (produced - target) as usize;
        today.truncate(today.len() - excess.min(today.len()));
        today.sort_by_key(|e| e.ts);
        self.pending.extend(today);
        self.day += 1;
    }
}

impl Iterator for Interactions {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.pending.len() < BATCH_ROWS && self.day < self.world.spec.days {
            self.next_day();
        }
        if self.pending.is_empty() {
            return None;
        }
        let take = self.pending.len().min(BATCH_ROWS);
        let rows: Vec<Event> = self.pending.drain(..take).collect();
        self.written += take as u64;
        Some(events_batch(&rows))
    }
}

struct Event {
    user: u32,
    item: u32,
    kind: &'static str,
    ts: i64,
}

impl Event {
    fn new(user: usize, item: u32, kind: &'static str, ts: i64) -> Self {
        Self {
            user: user as u32,
            item,
            kind,
            ts,
        }
    }
}

fn events_batch(rows: &[Event]) -> Result<RecordBatch> {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|e| i64::from(e.user)),
        )),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|e| i64::from(e.item)),
        )),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|e| e.kind))),
        Arc::new(TimestampMicrosecondArray::from_iter_values(
            rows.iter().map(|e| e.ts),
        )),
    ];
    Ok(RecordBatch::try_new(World::interactions_schema(), columns)?)
}

fn timestamp() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, None)
}

fn micros(at: NaiveDateTime) -> i64 {
    at.and_utc().timestamp_micros()
}

fn weighted(weights: &[f64]) -> Result<WeightedIndex<f64>> {
    WeightedIndex::new(weights)
        .map_err(|e| Error::Internal(format!("demo sampler over {} weights: {e}", weights.len())))
}

/// A standard normal draw (Box-Muller), so the data does not depend on rand_distr's algorithms.
fn gaussian(rng: &mut ChaCha8Rng) -> f64 {
    // random() is in [0, 1): 1 - u is in (0, 1], where ln is finite.
    let u1 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Fisher-Yates, written out so the order depends only on the seed and this code.
fn shuffle(values: &mut [usize], rng: &mut ChaCha8Rng) {
    for i in (1..values.len()).rev() {
        let j = rng.random_range(0..=i);
        values.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use chrono::NaiveDate;

    use super::*;

    fn spec(events: u64) -> Spec {
        Spec {
            users: 200,
            items: 100,
            events,
            days: 30,
            end: NaiveDate::from_ymd_opt(2026, 1, 31)
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .expect("date"),
            seed: 7,
        }
    }

    fn all_events(spec: Spec) -> Vec<RecordBatch> {
        World::new(spec)
            .expect("world")
            .interactions()
            .collect::<Result<Vec<_>>>()
            .expect("batches")
    }

    #[test]
    fn exact_count_time_ordered_and_deterministic() {
        let batches = all_events(spec(150_000));
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        assert_eq!(rows, 150_000);
        assert!(batches.len() >= 3, "written in several batches");
        assert_eq!(batches, all_events(spec(150_000)), "same spec, same data");
        let other = Spec {
            seed: 8,
            ..spec(150_000)
        };
        assert_ne!(batches, all_events(other), "another seed, other data");
    }

    #[test]
    fn tastes_show_in_the_clicks() {
        let world = World::new(spec(100_000)).expect("world");
        let favourites = world.user_favourites.clone();
        let categories = world.item_category.clone();
        let (mut liked, mut other) = ([0u64; 2], [0u64; 2]);
        for batch in world.interactions() {
            let batch = batch.expect("batch");
            let column = |i: usize| batch.column(i).clone();
            let users = column(0);
            let users = users.as_any().downcast_ref::<Int64Array>().expect("users");
            let items = column(1);
            let items = items.as_any().downcast_ref::<Int64Array>().expect("items");
            let kinds = column(2);
            let kinds = kinds.as_any().downcast_ref::<StringArray>().expect("kinds");
            for row in 0..batch.num_rows() {
                let fav = favourites[users.value(row) as usize];
                let category = categories[items.value(row) as usize];
                let counts = if fav.contains(&category) {
                    &mut liked
                } else {
                    &mut other
                };
                match kinds.value(row) {
                    "view" => counts[0] += 1,
                    "click" => counts[1] += 1,
                    _ => {}
                }
            }
        }
        let ctr = |c: [u64; 2]| c[1] as f64 / c[0] as f64;
        assert!(
            liked[0] > 2 * other[0],
            "most views are in favourite categories"
        );
        assert!(ctr(liked) > 3.0 * ctr(other), "{liked:?} vs {other:?}");
    }

    #[test]
    fn bad_sizes_name_the_flag() {
        let tiny = Spec {
            users: 1,
            ..spec(1000)
        };
        let error = World::new(tiny).err().expect("refused").to_string();
        assert!(error.contains("--users"), "{error}");
    }
}
