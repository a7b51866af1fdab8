use super::*;
use crate::loadgen::fleet::Rng;

fn shape() -> TailShape {
    TailShape {
        block_len: 100,
        blocks: 5,
        tail_q: 0.02,
        min_tail: 5,
        scale_floor: 0.5,
    }
}

#[test]
fn probabilities_fall_as_values_grow_and_stay_in_range() {
    let mut w = TailWindow::new(shape());
    let mut rng = Rng::new(1);
    for _ in 0..450 {
        w.push(rng.normal());
    }
    let mut last = 1.0;
    for i in -40..=80 {
        let v = i as f64 / 10.0;
        let p = w.p_upper(v);
        assert!(p > 0.0 && p <= 1.0, "p_upper({v}) = {p}");
        assert!(
            p <= last + 1e-12,
            "p_upper not monotone at {v}: {p} > {last}"
        );
        last = p;
        let q = w.p_lower(-v);
        assert!(
            (q - p).abs() < 0.05,
            "tails of a symmetric sample differ at {v}: {p} vs {q}"
        );
    }
}

#[test]
fn the_fitted_tail_tells_a_new_record_from_a_far_outlier() {
    let mut w = TailWindow::new(shape());
    let mut rng = Rng::new(2);
    let mut max = f64::MIN;
    for _ in 0..500 {
        let v = rng.normal();
        max = max.max(v);
        w.push(v);
    }
    let record = w.p_upper(max + 0.01);
    let far = w.p_upper(max + 10.0);
    assert!(
        record > 1e-3,
        "a barely new record is not extreme: {record}"
    );
    assert!(far < 1e-6, "far outlier: {far}");
}

#[test]
fn one_far_value_does_not_set_the_tail_several_do() {
    // 300 values with a tail fraction of 0.7%: a short history (as hourly
    // series have for four weeks), whose fitted tail is `min_tail` values.
    let shape = TailShape {
        block_len: 500,
        tail_q: 0.007,
        ..shape()
    };
    let mut rng = Rng::new(3);
    let mut w = TailWindow::new(shape);
    for _ in 0..300 {
        w.push(rng.normal());
    }
    w.push(10.0);
    assert!(
        w.p_two_sided_trimmed(10.0) < 1e-6,
        "{}",
        w.p_two_sided_trimmed(10.0)
    );
    // A series whose tail is heavy shows it more than once.
    w.push(9.0);
    w.push(11.0);
    assert!(
        w.p_two_sided_trimmed(10.0) > 1e-3,
        "{}",
        w.p_two_sided_trimmed(10.0)
    );
    // A long history fits the whole tail: it has room for more than one.
    let mut long = TailWindow::new(shape);
    for _ in 0..2000 {
        long.push(rng.normal());
    }
    long.push(10.0);
    assert_eq!(long.p_two_sided_trimmed(10.0), long.p_two_sided(10.0));
}

#[test]
fn the_body_is_known_before_the_first_block_closes() {
    let shape = TailShape {
        block_len: 500,
        ..shape()
    };
    let mut rng = Rng::new(4);
    let mut w = TailWindow::new(shape);
    for _ in 0..OPEN_BODY_MIN - 1 {
        w.push(rng.normal());
    }
    assert_eq!(w.body_range(1.0), None);
    for _ in 0..OPEN_BODY_EVERY {
        w.push(rng.normal());
    }
    // The 1/8 and 7/8 quantiles of standard normal noise: about -1.15, 1.15.
    let Some((lo, hi)) = w.body_range(1.0) else {
        panic!("no body after {} values", w.len())
    };
    assert!(
        (-1.8..-0.6).contains(&lo) && (0.6..1.8).contains(&hi),
        "{lo} {hi}"
    );
}

#[test]
fn old_values_leave_the_window() {
    let mut w = TailWindow::new(shape());
    for _ in 0..1000 {
        w.push(1000.0);
    }
    for i in 0..700 {
        w.push((i % 10) as f64);
    }
    assert!(w.len() <= 600);
    // The 1000s are gone: 11 is beyond everything now.
    assert!(w.p_upper(11.0) < 0.01);
    assert!(w.median() < 10.0);
}

#[test]
fn non_finite_values_are_not_kept() {
    let mut w = TailWindow::new(shape());
    w.push(f64::NAN);
    w.push(f64::NEG_INFINITY);
    assert!(w.is_empty());
    assert_eq!(w.p_upper(1.0), 1.0);
}
