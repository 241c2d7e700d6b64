//! Optional product metadata: `products.csv` (as in s2s-dev), for display in the web shop.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::ids::{Category, ProductId, ProductKey};
use crate::problem::{Problem, Problems};

/// What is known about a product besides its photos.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductInfo {
    /// Display name, e.g. "Baggit Green Handbag".
    pub name: String,
    /// The shop's finer type, e.g. "Handbags".
    pub article_type: String,
    /// Main colour, e.g. "Green".
    pub base_colour: String,
    /// Target gender, e.g. "Women".
    pub gender: String,
    /// Where the catalog photo came from (informational).
    pub source_image: String,
}

/// Product metadata keyed by [`ProductKey`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    products: BTreeMap<ProductKey, ProductInfo>,
}

/// The columns of `products.csv`, in order.
pub const CATALOG_COLUMNS: [&str; 7] = [
    "product",
    "category",
    "articleType",
    "baseColour",
    "gender",
    "name",
    "source_image",
];

impl Catalog {
    /// Reads `products.csv` (`product,category,articleType,baseColour,gender,name,source_image`,
    /// any column order). Every bad row is reported with its line and field; a duplicate
    /// (category, product) is an error.
    pub fn load(path: &Path) -> Result<Catalog, Problems> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .from_path(path)
            .map_err(|e| Problems(vec![Problem::error(path, format!("cannot read: {e}"))]))?;
        let headers = reader
            .headers()
            .map_err(|e| {
                Problems(vec![Problem::error(
                    path,
                    format!("cannot read header: {e}"),
                )
                .at(1)])
            })?
            .clone();
        let mut column = BTreeMap::new();
        let mut problems = Vec::new();
        for name in CATALOG_COLUMNS {
            match headers.iter().position(|h| h.trim() == name) {
                Some(i) => {
                    column.insert(name, i);
                }
                None => problems.push(Problem::error(path, "missing column").at(1).field(name)),
            }
        }
        if !problems.is_empty() {
            return Err(Problems(problems));
        }
        let mut products = BTreeMap::new();
        for (i, row) in reader.records().enumerate() {
            let line = i + 2;
            let row = match row {
                Ok(row) => row,
                Err(e) => {
                    problems.push(Problem::error(path, format!("bad CSV row: {e}")).at(line));
                    continue;
                }
            };
            let get = |name: &str| row.get(column[name]).unwrap_or("").trim().to_string();
            let product = match get("product").parse::<u64>() {
                Ok(p) => ProductId(p),
                Err(_) => {
                    problems.push(
                        Problem::error(
                            path,
                            format!(
                                "expected a non-negative integer, found {:?}",
                                get("product")
                            ),
                        )
                        .at(line)
                        .field("product"),
                    );
                    continue;
                }
            };
            let category = match Category::new(&get("category")) {
                Ok(c) => c,
                Err(e) => {
                    problems.push(
                        Problem::error(path, e.to_string())
                            .at(line)
                            .field("category"),
                    );
                    continue;
                }
            };
            let key = ProductKey::new(category, product);
            let info = ProductInfo {
                name: get("name"),
                article_type: get("articleType"),
                base_colour: get("baseColour"),
                gender: get("gender"),
                source_image: get("source_image"),
            };
            if products.insert(key.clone(), info).is_some() {
                problems.push(Problem::error(path, format!("duplicate product {key}")).at(line));
            }
        }
        if problems.is_empty() {
            Ok(Catalog { products })
        } else {
            Err(Problems(problems))
        }
    }

    /// The metadata of a product.
    pub fn get(&self, key: &ProductKey) -> Option<&ProductInfo> {
        self.products.get(key)
    }

    /// Adds or replaces a product's metadata.
    pub fn insert(&mut self, key: ProductKey, info: ProductInfo) {
        self.products.insert(key, info);
    }

    /// All products, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&ProductKey, &ProductInfo)> {
        self.products.iter()
    }

    /// Number of products.
    pub fn len(&self) -> usize {
        self.products.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.products.is_empty()
    }
}
