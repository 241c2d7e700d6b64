//! ImageNet-1k class names, in index order (a copy of `shared/models/imagenet1k_classes.txt`).

const CLASSES: &str = include_str!("imagenet1k_classes.txt");

/// The name of ImageNet-1k class `index` (0–999), or `None` out of range.
pub fn imagenet_class_name(index: usize) -> Option<&'static str> {
    CLASSES.lines().nth(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousand_classes_in_order() {
        assert_eq!(CLASSES.lines().count(), 1000);
        assert_eq!(imagenet_class_name(285), Some("Egyptian cat"));
        assert_eq!(imagenet_class_name(1000), None);
    }
}
