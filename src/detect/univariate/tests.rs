use super::*;
use crate::loadgen::fleet::Rng;

/// A day-seasonal series at 5-minute steps with gaussian noise.
fn seasonal(rng: &mut Rng, rows: usize) -> Vec<(i64, f64)> {
    (0..rows)
        .map(|i| {
            let t = 1_400_000_000 + i as i64 * 300;
            let phase = (t % 86_400) as f64 / 86_400.0 * std::f64::consts::TAU;
            (t, 100.0 + 30.0 * phase.sin() + 2.0 * rng.normal())
        })
        .collect()
}

fn scores(params: &UnivariateParams, series: &[(i64, f64)]) -> Vec<f64> {
    let mut d = Univariate::new(params.clone());
    series.iter().map(|(t, v)| d.observe(*t, *v)).collect()
}

#[test]
fn a_prefix_scores_the_same_as_the_whole_run() {
    let series = seasonal(&mut Rng::new(7), 3000);
    let params = UnivariateParams::default();
    let whole = scores(&params, &series);
    for cut in [1, 151, 999, 2500] {
        assert_eq!(
            scores(&params, &series[..cut]),
            whole[..cut],
            "prefix of {cut}"
        );
    }
}

/// Seeds a statistical test averages over: one noise draw proves little.
const DRAWS: u64 = 30;

#[test]
fn steady_seasonal_noise_stays_within_the_alert_budget_and_a_spike_is_caught() {
    let params = UnivariateParams::default();
    let mut alerts = 0;
    for seed in 1..=DRAWS {
        let mut series = seasonal(&mut Rng::new(seed), 4000);
        let clean = scores(&params, &series);
        alerts += clean.iter().filter(|s| **s >= params.fire).count();
        // Scored without the rest (an alert just before may silence it).
        series[3000].1 += 60.0;
        let mut d = Univariate::new(params.clone());
        let spiked: Vec<f64> = series.iter().map(|(t, v)| d.observe_raw(*t, *v)).collect();
        assert!(
            spiked[3000] >= params.fire,
            "seed {seed}: spike scored {}",
            spiked[3000]
        );
    }
    // Scores are one minus a p-value: on noise, at most 1 - fire of the rows may
    // reach `fire` (8 in 4000 rows at 0.998), averaged over the draws.
    let mean = alerts as f64 / DRAWS as f64;
    let budget = 4000.0 * (1.0 - params.fire);
    assert!(
        mean <= budget,
        "{mean} alerts per 4000 clean rows, budget {budget}"
    );
}

#[test]
fn a_value_normal_at_noon_is_anomalous_at_night() {
    let params = UnivariateParams::default();
    let mut series = seasonal(&mut Rng::new(3), 4000);
    // Row 3000's time-of-day sits at the trough; give it the crest's value.
    let (t, _) = series[3000];
    let trough = (t % 86_400) as f64 / 86_400.0;
    let i = (0..288).map(|k| 3000 + k).find(|&i| {
        let phase = (series[i].0 % 86_400) as f64 / 86_400.0;
        (phase - 0.75).abs() < 0.004
    });
    let Some(i) = i else {
        panic!("no trough near row 3000 ({trough})")
    };
    series[i].1 = 130.0;
    let s = scores(&params, &series);
    assert!(s[i] >= params.fire, "contextual anomaly scored {}", s[i]);
}

#[test]
fn non_finite_values_are_ignored() {
    let mut d = Univariate::new(UnivariateParams::default());
    assert_eq!(d.observe(0, f64::NAN), 0.0);
    assert_eq!(d.observe(0, f64::INFINITY), 0.0);
    assert_eq!(d.seen(), 0);
}

#[test]
fn defaults_match_the_embedded_configuration() {
    let config = crate::config::Config::from_toml_str("").expect("defaults load");
    assert_eq!(config.detect.univariate, UnivariateParams::default());
}

#[test]
fn memory_is_bounded_by_the_parameters() {
    let params = UnivariateParams::default();
    let mut d = Univariate::new(params.clone());
    let mut rng = Rng::new(5);
    for i in 0..20_000 {
        d.observe(i * 60, rng.normal());
    }
    assert!(d.values.len() <= (params.history_blocks + 1) * params.history_block);
    assert!(params.bytes() < 256 * 1024, "{} bytes", params.bytes());
}

// --- What real series need (issue 11): each test shows one effect. -------------

const HOUR: i64 = 3600;

/// A series at `step` seconds: `level(i)` plus gaussian noise of `noise`.
fn series(
    rng: &mut Rng,
    rows: usize,
    step: i64,
    noise: f64,
    level: impl Fn(usize) -> f64,
) -> Vec<(i64, f64)> {
    (0..rows)
        .map(|i| {
            let t = 1_700_000_000 + i as i64 * step;
            (t, level(i) + noise * rng.normal())
        })
        .collect()
}

/// A daily cycle of amplitude `a` around `base`, for a row at `step` seconds.
fn daily(i: usize, step: i64, base: f64, a: f64) -> f64 {
    let phase = ((i as i64 * step) % 86_400) as f64 / 86_400.0 * std::f64::consts::TAU;
    base + a * phase.sin()
}

/// Indices of the rows that alert.
fn alerts(params: &UnivariateParams, series: &[(i64, f64)]) -> Vec<usize> {
    let fire = params.fire;
    scores(params, series)
        .iter()
        .enumerate()
        .filter(|(_, s)| **s >= fire)
        .map(|(i, _)| i)
        .collect()
}

fn fired_within(alerts: &[usize], from: usize, len: usize) -> bool {
    alerts.iter().any(|a| (from..from + len).contains(a))
}

/// Poisson counts (Knuth's method): crash counts and other small integers.
fn poisson(rng: &mut Rng, mean: f64) -> f64 {
    let limit = (-mean).exp();
    let (mut k, mut p) = (0.0, rng.unit());
    while p > limit {
        k += 1.0;
        p *= rng.unit();
    }
    k
}

/// Over `DRAWS` noise draws, the share of draws in which each incident of
/// `make(seed)` (series, incident starts, rows each lasts) fired.
fn caught(make: impl Fn(u64) -> (Vec<(i64, f64)>, Vec<usize>, usize)) -> Vec<f64> {
    let params = UnivariateParams::default();
    let mut hits = Vec::new();
    for seed in 1..=DRAWS {
        let (s, incidents, len) = make(seed);
        let a = alerts(&params, &s);
        hits.resize(incidents.len(), 0.0);
        for (k, at) in incidents.into_iter().enumerate() {
            hits[k] += f64::from(u8::from(fired_within(&a, at, len)));
        }
    }
    hits.iter().map(|h| h / DRAWS as f64).collect()
}

/// Three 10-sigma incidents of two hours a day apart in an hourly series with a
/// daily cycle.
fn hourly_incidents(seed: u64) -> (Vec<(i64, f64)>, Vec<usize>, usize) {
    let mut s = series(&mut Rng::new(seed), 24 * 40, HOUR, 3.0, |i| {
        daily(i, HOUR, 100.0, 20.0)
    });
    let incidents = vec![24 * 20 + 5, 24 * 21 + 14, 24 * 22 + 9];
    for &at in &incidents {
        for row in &mut s[at..at + 2] {
            row.1 += 30.0;
        }
    }
    (s, incidents, 2)
}

#[test]
fn an_hourly_incident_fires_in_nearly_every_noise_draw() {
    // Hourly samples: a rest counted in values alone (40 hours) would swallow
    // every incident after the first; here the first one.
    let rates = caught(hourly_incidents);
    assert!(
        rates[0] >= 0.9,
        "first incident caught in {:.0}% of draws",
        rates[0] * 100.0
    );
}

#[test]
fn hourly_incidents_a_day_apart_each_fire() {
    // 97%, 100% and 93% of draws. Before, the second fired in 7% (and the third
    // in 73%): at hourly sampling no block of the history had closed by then,
    // so nothing was declustered (the open block's body now stands in), and
    // the first incident's alert value alone set the residual tail's scale (a
    // short history's residual tail is now fitted without its largest excess,
    // `detect::tail::TRIM_FROM`).
    let rates = caught(hourly_incidents);
    assert!(
        rates.iter().all(|r| *r >= 0.9),
        "caught per incident: {rates:?}"
    );
}

#[test]
fn hourly_detection_starts_within_three_days() {
    let params = UnivariateParams::default();
    let mut s = series(&mut Rng::new(22), 24 * 5, HOUR, 2.0, |_| 50.0);
    s[24 * 3].1 += 40.0;
    let a = alerts(&params, &s);
    assert!(a.contains(&(24 * 3)), "a spike on day 3 missed: {a:?}");
}

/// Three like incidents within four days of a daily-seasonal series (5-minute
/// values, noise 1) four noise spreads high for an hour.
fn clustered(seed: u64) -> (Vec<(i64, f64)>, Vec<usize>, usize) {
    let step = 300;
    let mut s = series(&mut Rng::new(seed), 288 * 14, step, 1.0, |i| {
        daily(i, step, 50.0, 10.0)
    });
    let incidents = vec![288 * 8 + 40, 288 * 9 + 190, 288 * 11 + 100];
    for &at in &incidents {
        for row in &mut s[at..at + 12] {
            row.1 += 4.0;
        }
    }
    (s, incidents, 12)
}

#[test]
fn clustered_incidents_fire_as_the_first_did() {
    // The first incident must not teach the detector that the next two are
    // normal: the seasonal residuals of a transient excursion are declustered
    // (`release_held`): 83%, 87% and 77% of draws; without it 83%, 83% and 63%.
    let rates = caught(clustered);
    assert!(
        rates.iter().all(|r| *r >= rates[0] - 0.1),
        "caught per incident: {rates:?}"
    );
}

#[test]
fn a_step_back_to_a_level_seen_before_fires() {
    // 100 -> 112 -> 100 -> 112 with noise 3: the last step returns to a level the
    // history knows well, yet it is a change.
    let params = UnivariateParams::default();
    let s = series(&mut Rng::new(24), 8000, 60, 3.0, |i| {
        if (i / 2000) % 2 == 1 { 112.0 } else { 100.0 }
    });
    let a = alerts(&params, &s);
    assert!(fired_within(&a, 6000, 60), "second step missed: {a:?}");
}

#[test]
fn small_integer_counts_stay_quiet_until_a_burst() {
    // Crash counts: Poisson(0.3) an hour for 60 days, then a burst of 8.
    let params = UnivariateParams::default();
    let mut rng = Rng::new(25);
    let mut s: Vec<(i64, f64)> = (0..24 * 60)
        .map(|i| (1_700_000_000 + i as i64 * HOUR, poisson(&mut rng, 0.3)))
        .collect();
    let healthy = alerts(&params, &s);
    assert!(
        healthy.len() <= 3,
        "{} alerts on healthy counts: {healthy:?}",
        healthy.len()
    );
    let at = 24 * 55;
    s[at].1 = 8.0;
    let a = alerts(&params, &s);
    assert!(a.contains(&at), "a burst of 8 missed: {a:?}");
}

#[test]
fn zeros_and_flat_stretches_do_not_storm() {
    // A noisy series that sticks (a frozen sensor) for 1000 values and resumes,
    // and a series of zeros with rare blips of 1.
    let params = UnivariateParams::default();
    let mut rng = Rng::new(26);
    let mut s = series(&mut rng, 6000, 60, 2.0, |_| 40.0);
    let stuck = s[3000].1;
    for row in &mut s[3000..4000] {
        row.1 = stuck;
    }
    let a = alerts(&params, &s);
    // The moment it resumes may alert (the freeze ended); no storm follows.
    let after = a.iter().filter(|i| (4001..4300).contains(*i)).count();
    assert!(after <= 1, "{after} alerts after the series resumed: {a:?}");

    let zeros: Vec<(i64, f64)> = (0..6000)
        .map(|i| (i as i64 * 60, if rng.below(500) == 0 { 1.0 } else { 0.0 }))
        .collect();
    let a = alerts(&params, &zeros);
    assert!(
        a.len() <= 3,
        "{} alerts on zeros with rare blips: {a:?}",
        a.len()
    );
}

#[test]
fn the_first_move_of_a_series_that_never_moved_is_not_its_own_yardstick() {
    // A success rate at exactly 100% for 300 minutes, then 95%: no step was ever
    // seen, so none floors the tails; the drop's own step of 5 used to, and
    // scored it 0.985, below the alert threshold (a nearly flat series, with
    // jitter of 0.5, scored the same drop 0.99998).
    let params = UnivariateParams::default();
    let mut d = Univariate::new(params.clone());
    for i in 0..300 {
        assert_eq!(d.observe(i * 60, 100.0), 0.0, "flat value {i}");
    }
    let drop = d.observe(300 * 60, 95.0);
    assert!(drop >= params.fire, "the first drop scored {drop}");
    // Once a step is known it floors the tails: the next like move, after the
    // rest, is one of a kind already seen, not a far outlier.
    let mut later = 0.0;
    for i in 301..450 {
        let v = if i >= 446 { 97.0 } else { 100.0 };
        later = d.observe(i * 60, v);
    }
    assert!(later < 0.99999, "a move like a known one scored {later}");
}
