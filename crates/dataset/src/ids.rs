//! Typed identifiers: photos, products, categories, and a product's identity.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

/// A photo id: the `photo` field of the label files and the stem of `<photos>/<photo>.jpg`.
///
/// Street photos and shop photos share one id space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PhotoId(pub u64);

/// A product id: the `product` field of the label files.
///
/// Product ids repeat across categories; a product's identity is a [`ProductKey`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ProductId(pub u64);

impl fmt::Display for PhotoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for ProductId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for PhotoId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.trim().parse().map(PhotoId)
    }
}

impl FromStr for ProductId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.trim().parse().map(ProductId)
    }
}

/// A garment category such as `dresses` or `footwear`, taken from the label file names.
///
/// A valid name is non-empty and made only of lowercase ASCII letters, digits and `_`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Category(String);

/// A category name that is empty or holds characters other than `[a-z0-9_]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid category name {name:?}: expected lowercase ASCII letters, digits or '_'")]
pub struct InvalidCategory {
    /// The rejected name.
    pub name: String,
}

impl Category {
    /// Validates and wraps a category name.
    pub fn new(name: &str) -> Result<Self, InvalidCategory> {
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if valid {
            Ok(Category(name.to_string()))
        } else {
            Err(InvalidCategory {
                name: name.to_string(),
            })
        }
    }

    /// The name, e.g. `"dresses"`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Category {
    type Err = InvalidCategory;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Category::new(s)
    }
}

impl AsRef<str> for Category {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Category {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Category::new(&name).map_err(serde::de::Error::custom)
    }
}

/// The eleven categories of street2shop, in alphabetical order.
pub const STREET2SHOP_CATEGORIES: [&str; 11] = [
    "bags",
    "belts",
    "dresses",
    "eyewear",
    "footwear",
    "hats",
    "leggings",
    "outerwear",
    "pants",
    "skirts",
    "tops",
];

/// A product's identity: product ids repeat across categories, so the pair is the key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProductKey {
    /// The category whose files list the product.
    pub category: Category,
    /// The product id within that category.
    pub product: ProductId,
}

impl ProductKey {
    /// Builds a key.
    pub fn new(category: Category, product: ProductId) -> Self {
        ProductKey { category, product }
    }
}

impl fmt::Display for ProductKey {
    /// `category/product`, e.g. `dresses/4916`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.category, self.product)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn category_names() {
        assert_eq!(Category::new("dresses").unwrap().as_str(), "dresses");
        assert!(Category::new("a_1").is_ok());
        assert!(Category::new("").is_err());
        assert!(Category::new("Dresses").is_err());
        assert!(Category::new("bad-name").is_err());
        let json = serde_json::to_string(&Category::new("tops").unwrap()).unwrap();
        assert_eq!(json, "\"tops\"");
        assert!(serde_json::from_str::<Category>("\"To ps\"").is_err());
    }

    #[test]
    fn ids_are_transparent() {
        assert_eq!(serde_json::to_string(&PhotoId(7)).unwrap(), "7");
        assert_eq!(
            serde_json::from_str::<ProductId>("9").unwrap(),
            ProductId(9)
        );
        let key = ProductKey::new(Category::new("bags").unwrap(), ProductId(3));
        assert_eq!(key.to_string(), "bags/3");
    }
}
