//! `model.toml`: what a model directory declares about its ONNX file, read before tract sees it.
//!
//! ```toml
//! version = "3"                 # shown in system.models; any string
//! kind = "scorer"               # scorer (predict) | two_tower (recommend)
//! description = "CTR ranker"
//!
//! [[inputs]]                    # model.onnx's inputs, in the order SQL arguments fill them
//! name = "features"
//! type = "float32"              # float32 | float64 | int64 | int32
//! shape = [-1, 64]              # -1 is the batch; [-1] or [-1, 1]: one value per row
//!
//! [[outputs]]
//! name = "score"
//! type = "float32"
//! shape = [-1, 1]
//! ```
//!
//! A `two_tower` model's `model.onnx` is the user tower (one int64 input, the user id; one output, the
//! embedding) and it adds sections whose queries run in Quiver's own SQL, once per model version (at load), except
//! `exclude`, which answers for the user id `$1` at each call (from an index of the table when it
//! can: [`crate::scoring::exclusion`]):
//!
//! ```toml
//! metric = "dot"                # dot | cosine
//! [items]                       # (item_id, embedding) rows; with `tower`, item ids only
//! query = "SELECT item_id FROM default.items"
//! tower = "item_tower.onnx"
//! [users]                       # known user ids; others get the fallback
//! query = "SELECT DISTINCT user_id FROM default.interactions"
//! [exclude]                     # items not to recommend to user $1
//! query = "SELECT item_id FROM default.interactions WHERE user_id = $1"
//! [fallback]                    # (item_id, score) for unknown users, best first
//! query = "SELECT item_id, CAST(COUNT(*) AS DOUBLE) FROM default.interactions GROUP BY 1 ORDER BY 2 DESC LIMIT 100"
//! ```

use std::path::Path;

use datafusion::arrow::datatypes::DataType;
use serde::Deserialize;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Optional; when given it must equal the directory name (the name SQL uses).
    pub name: Option<String>,
    pub version: String,
    pub kind: ModelKind,
    #[serde(default)]
    pub description: String,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// Retrieval models only: how scores compare embeddings.
    #[serde(default)]
    pub metric: Metric,
    pub items: Option<ItemsSpec>,
    pub users: Option<UsersSpec>,
    pub exclude: Option<QuerySpec>,
    pub fallback: Option<QuerySpec>,
    pub rerank: Option<RerankSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// Scores rows: `predict('model', args...)`.
    Scorer,
    /// User tower + item embeddings: `recommend(...)`, `recommend_items(...)`, and `predict` of the
    /// user tower.
    TwoTower,
}

impl ModelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::Scorer => "scorer",
            ModelKind::TwoTower => "two_tower",
        }
    }
}

/// One ONNX input or output.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub element: ElementType,
    pub shape: Vec<i64>,
}

impl TensorSpec {
    /// Values per row: the product of the dimensions after the batch.
    pub fn width(&self) -> usize {
        self.shape
            .iter()
            .skip(1)
            .map(|d| usize::try_from(*d).unwrap_or(0))
            .try_fold(1usize, |w, d| w.checked_mul(d))
            .unwrap_or(usize::MAX)
    }

    pub fn describe(&self) -> String {
        let dims: Vec<String> = self
            .shape
            .iter()
            .map(|d| if *d < 0 { "N".into() } else { d.to_string() })
            .collect();
        format!(
            "{}: {}[{}]",
            self.name,
            self.element.as_str(),
            dims.join(", ")
        )
    }

    fn validate(&self, what: &str) -> Result<()> {
        let bad = |message: String| {
            Err(Error::InvalidInput(format!(
                "{what} '{}': {message}",
                self.name
            )))
        };
        match self.shape.first() {
            Some(-1) => {}
            _ => return bad("the first dimension must be -1 (the batch)".into()),
        }
        if self.shape.len() > 3 || self.shape.iter().skip(1).any(|d| *d <= 0) {
            return bad(format!(
                "shape {:?}: only [-1], [-1, n] or [-1, n, m] with positive n, m are supported",
                self.shape
            ));
        }
        if self.width() > MAX_WIDTH {
            return bad(format!(
                "shape {:?}: at most {MAX_WIDTH} values per row are supported",
                self.shape
            ));
        }
        Ok(())
    }
}

/// Most values per row of one input or output: a batch of 8192 such rows is 2 GiB of float32.
pub const MAX_WIDTH: usize = 1 << 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ElementType {
    Float32,
    Float64,
    Int64,
    Int32,
}

impl ElementType {
    pub fn as_str(self) -> &'static str {
        match self {
            ElementType::Float32 => "float32",
            ElementType::Float64 => "float64",
            ElementType::Int64 => "int64",
            ElementType::Int32 => "int32",
        }
    }

    pub fn arrow(self) -> DataType {
        match self {
            ElementType::Float32 => DataType::Float32,
            ElementType::Float64 => DataType::Float64,
            ElementType::Int64 => DataType::Int64,
            ElementType::Int32 => DataType::Int32,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    #[default]
    Dot,
    Cosine,
}

/// Where item embeddings come from: `query` returns `(item_id, embedding)`; with `tower` it returns
/// only item ids and the item tower ONNX file embeds them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemsSpec {
    pub query: String,
    pub tower: Option<String>,
}

/// Known users: `query` returns the user ids the model was trained on. Any other id is unknown and
/// gets the fallback instead of the user tower's guess.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsersSpec {
    pub query: String,
}

/// Re-ranking of the retrieved candidates by a scorer model: `candidates` items are retrieved, the
/// scorer sees one row per candidate (user embedding, item embedding, retrieval score: float32
/// `[-1, 2 * dim + 1]`), and its scores order the final `k`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RerankSpec {
    pub model: String,
    #[serde(default = "default_candidates")]
    pub candidates: usize,
}

fn default_candidates() -> usize {
    100
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuerySpec {
    pub query: String,
}

impl ModelSpec {
    /// Reads and checks `<dir>/model.toml`; `name` is the directory's name.
    pub fn read(dir: &Path, name: &str) -> Result<Self> {
        let path = dir.join("model.toml");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::InvalidInput(format!("{}: {e}", path.display())))?;
        Self::parse(&text, name)
            .map_err(|e| Error::InvalidInput(format!("{}: {e}", path.display())))
    }

    /// Parses and checks the text of a model.toml for the model `name`.
    pub fn parse(text: &str, name: &str) -> Result<Self> {
        let spec: ModelSpec =
            toml::from_str(text).map_err(|e| Error::InvalidInput(e.to_string()))?;
        spec.validate(name)?;
        Ok(spec)
    }

    fn validate(&self, name: &str) -> Result<()> {
        if let Some(declared) = &self.name
            && declared != name
        {
            return Err(Error::InvalidInput(format!(
                "name '{declared}' differs from the directory name '{name}'"
            )));
        }
        if self.inputs.is_empty() || self.outputs.is_empty() {
            return Err(Error::InvalidInput(
                "a model needs at least one [[inputs]] and one [[outputs]]".into(),
            ));
        }
        for input in &self.inputs {
            input.validate("input")?;
        }
        for output in &self.outputs {
            output.validate("output")?;
        }
        match self.kind {
            ModelKind::Scorer => {
                if self.items.is_some()
                    || self.users.is_some()
                    || self.exclude.is_some()
                    || self.fallback.is_some()
                    || self.rerank.is_some()
                {
                    return Err(Error::InvalidInput(
                        "[items], [users], [exclude], [fallback] and [rerank] are for kind = \"two_tower\""
                            .into(),
                    ));
                }
            }
            ModelKind::TwoTower => self.validate_two_tower()?,
        }
        Ok(())
    }

    fn validate_two_tower(&self) -> Result<()> {
        let [input] = self.inputs.as_slice() else {
            return Err(Error::InvalidInput(
                "a two_tower model's user tower (model.onnx) takes one input, the user id".into(),
            ));
        };
        if input.element != ElementType::Int64 || input.shape != [-1] {
            return Err(Error::InvalidInput(format!(
                "the user tower's input must be int64 [-1] (the user id), not {}",
                input.describe()
            )));
        }
        let [output] = self.outputs.as_slice() else {
            return Err(Error::InvalidInput(
                "a two_tower model's user tower has one output, the embedding".into(),
            ));
        };
        if output.element != ElementType::Float32 || output.shape.len() != 2 {
            return Err(Error::InvalidInput(format!(
                "the user tower's output must be float32 [-1, dim], not {}",
                output.describe()
            )));
        }
        if let Some(rerank) = &self.rerank
            && !(1..=10_000).contains(&rerank.candidates)
        {
            return Err(Error::InvalidInput(format!(
                "[rerank] candidates must be between 1 and 10000, got {}",
                rerank.candidates
            )));
        }
        if self.items.is_none() {
            return Err(Error::InvalidInput(
                "a two_tower model needs [items] (query, and optionally tower)".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ModelSpec> {
        let spec: ModelSpec =
            toml::from_str(text).map_err(|e| Error::InvalidInput(e.to_string()))?;
        spec.validate("m")?;
        Ok(spec)
    }

    #[test]
    fn scorer_parses() {
        let spec = parse(
            r#"
            version = "1"
            kind = "scorer"
            [[inputs]]
            name = "x"
            type = "float32"
            shape = [-1, 4]
            [[outputs]]
            name = "y"
            type = "float32"
            shape = [-1, 1]
            "#,
        )
        .expect("valid");
        assert_eq!(spec.inputs[0].width(), 4);
        assert_eq!(spec.outputs[0].describe(), "y: float32[N, 1]");
    }

    #[test]
    fn mistakes_are_named() {
        let no_batch = r#"
            version = "1"
            kind = "scorer"
            inputs = [{ name = "x", type = "float32", shape = [4] }]
            outputs = [{ name = "y", type = "float32", shape = [-1] }]
        "#;
        let err = parse(no_batch).expect_err("no batch dimension");
        assert!(err.to_string().contains("input 'x'"), "{err}");

        let unknown = r#"
            version = "1"
            kind = "scorer"
            colour = "red"
            inputs = [{ name = "x", type = "float32", shape = [-1] }]
            outputs = [{ name = "y", type = "float32", shape = [-1] }]
        "#;
        assert!(parse(unknown).is_err());

        let tower_without_items = r#"
            version = "1"
            kind = "two_tower"
            inputs = [{ name = "user_id", type = "int64", shape = [-1] }]
            outputs = [{ name = "e", type = "float32", shape = [-1, 8] }]
        "#;
        let err = parse(tower_without_items).expect_err("no items");
        assert!(err.to_string().contains("[items]"), "{err}");
    }
}
