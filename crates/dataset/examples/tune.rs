use std::collections::HashMap;
use std::path::Path;
use wtb_dataset::*;
fn main() {
    let root = Path::new("/work/shared/data/s2s-dev");
    let labels = Labels::load(&root.join("labels")).unwrap();
    let truth = std::fs::read_to_string(root.join("truth.csv")).unwrap();
    let kinds: HashMap<u64, String> = truth.lines().skip(1).map(|l| { let f: Vec<&str> = l.split(',').collect(); (f[0].parse().unwrap(), f[1].to_string()) }).collect();
    let cfg = CleanConfig::default();
    let shop = labels.shop_photos();
    let mut rows = vec![];
    for p in shop.keys() {
        let img = load_rgb(&photo_path(&root.join("photos_resized"), *p), &DecodeLimits::default()).unwrap();
        let f = border_light_fraction(&img, &cfg);
        rows.push((kinds[&p.0].clone(), f, p.0));
    }
    for kind in ["shop_original","shop_variant","placeholder","nonwhite","street"] {
        let mut v: Vec<f64> = rows.iter().filter(|r| r.0==kind).map(|r| r.1).collect();
        v.sort_by(|a,b| a.partial_cmp(b).unwrap());
        if v.is_empty() { continue; }
        let q = |x: f64| v[((v.len()-1) as f64 * x) as usize];
        println!("{kind} n={} min={:.3} p1={:.3} p5={:.3} p50={:.3} p95={:.3} max={:.3}", v.len(), v[0], q(0.01), q(0.05), q(0.5), q(0.95), v[v.len()-1]);
    }
    let mut low: Vec<_> = rows.iter().filter(|r| r.0.starts_with("shop") && r.1 < 0.9).collect();
    low.sort_by(|a,b| a.1.partial_cmp(&b.1).unwrap());
    for r in low.iter().take(20) { println!("low shop {} {:.3} {}", r.0, r.1, r.2); }
    let mut high: Vec<_> = rows.iter().filter(|r| r.0=="nonwhite").collect();
    high.sort_by(|a,b| b.1.partial_cmp(&a.1).unwrap());
    for r in high.iter().take(10) { println!("high nonwhite {:.3} {}", r.1, r.2); }
}
