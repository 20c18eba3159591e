//! The Balanced Scorecard, per period of the scorecard's grain: each KPI's value
//! rolled to that grain and scored, then KPI -> objective -> perspective ->
//! overall, each node combining the children that have a score.
//!
//! A KPI finer than the scorecard (days in a month) is rolled up: ratio KPIs as
//! the sum of numerators over the sum of denominators, value KPIs by their
//! `aggregation:`; targets roll up the same way (a month's target is the sum of
//! its days' targets when the values are summed). A KPI coarser than the
//! scorecard (a quarter in a month) gives each period inside it its own score.
//! A week belongs to the month (quarter, year) its Monday falls in.
//! A KPI with segments counts once: the mean of its segments' scores.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::NaiveDate;

use super::Targets;
use super::method::{self, Goals, Status};
use crate::config::{Aggregation, Grain, Pipeline, Rollup};
use crate::kpi::{KpiSeries, KpiValue, Measure, period};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Overall,
    Perspective,
    Objective,
    Kpi,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Overall => "overall",
            Level::Perspective => "perspective",
            Level::Objective => "objective",
            Level::Kpi => "kpi",
        }
    }
}

/// One node of the scorecard for one period (the `scorecard/` dataset).
#[derive(Debug, Clone, PartialEq)]
pub struct ScorecardRow {
    pub period_start: NaiveDate,
    pub period_end: NaiveDate,
    pub level: Level,
    pub id: String,
    pub name: String,
    /// The node this one rolls up into; `None` for the overall score.
    pub parent: Option<String>,
    pub perspective: Option<String>,
    /// The KPI's value and target at the scorecard's grain (KPI rows without segments).
    pub value: Option<f64>,
    pub target: Option<f64>,
    pub score: Option<f64>,
    pub status: Status,
    /// The weight this node has in its parent.
    pub weight: f64,
    /// Children (segments, for a KPI) with a score, and all of them.
    pub children_scored: usize,
    pub children_total: usize,
    /// Objective rows: the objectives this one drives (the strategy map's arrows).
    pub causes: Vec<String>,
}

/// The scorecard of every period up to `as_of`; empty without a strategy map.
pub fn scorecard(
    pipeline: &Pipeline,
    series: &[KpiSeries],
    targets: &Targets,
    as_of: NaiveDate,
) -> Vec<ScorecardRow> {
    let card = &pipeline.scorecard;
    if card.objectives.is_empty() {
        return Vec::new();
    }
    let grain = card.grain;
    let mapped: Vec<&KpiSeries> = series
        .iter()
        .filter(|s| s.kpi.objective.is_some())
        .collect();
    let periods = periods(&mapped, grain, as_of);
    // Each KPI's values by the key `kpi_node` looks them up by, grouped once:
    // filtering all of them for every period made the roll-up quadratic.
    let grouped: Vec<BTreeMap<NaiveDate, Vec<&KpiValue>>> = mapped
        .iter()
        .map(|s| {
            let mut by: BTreeMap<NaiveDate, Vec<&KpiValue>> = BTreeMap::new();
            for v in &s.values {
                by.entry(value_key(s.kpi.grain, grain, v.period_start))
                    .or_default()
                    .push(v);
            }
            by
        })
        .collect();

    let mut rows = Vec::new();
    for start in periods {
        let end = period::end_of(grain, start);
        let row = |level, id: &str, name: &str, parent: Option<&str>, perspective: Option<&str>| {
            ScorecardRow {
                period_start: start,
                period_end: end,
                level,
                id: id.to_string(),
                name: name.to_string(),
                parent: parent.map(str::to_string),
                perspective: perspective.map(str::to_string),
                value: None,
                target: None,
                score: None,
                status: Status::NoData,
                weight: 1.0,
                children_scored: 0,
                children_total: 0,
                causes: Vec::new(),
            }
        };
        let mut overall = row(Level::Overall, "overall", &pipeline.name, None, None);
        let mut tree = Vec::new();
        let mut perspective_scores = Vec::new();
        for p in &card.perspectives {
            let mut perspective = row(
                Level::Perspective,
                &p.id,
                &p.name,
                Some("overall"),
                Some(&p.id),
            );
            perspective.weight = p.weight;
            let mut objective_scores = Vec::new();
            let mut below = Vec::new();
            for o in card.objectives.iter().filter(|o| o.perspective == p.id) {
                let mut objective = row(Level::Objective, &o.id, &o.name, Some(&p.id), Some(&p.id));
                objective.weight = o.weight;
                objective.causes = o.causes.clone();
                let mut kpi_scores = Vec::new();
                let mut kpis = Vec::new();
                for (s, by) in mapped
                    .iter()
                    .zip(&grouped)
                    .filter(|(s, _)| s.kpi.objective.as_deref() == Some(&o.id))
                {
                    let at = At {
                        grain,
                        start,
                        as_of,
                        targets,
                    };
                    let key = period_key(s.kpi.grain, grain, start);
                    let inside = by.get(&key).map_or(&[][..], Vec::as_slice);
                    let node = kpi_node(s, inside, &at);
                    let mut kpi = row(Level::Kpi, &s.kpi.id, &s.kpi.name, Some(&o.id), Some(&p.id));
                    kpi_scores.push((node.score, s.kpi.weight));
                    kpi.weight = s.kpi.weight;
                    (kpi.value, kpi.target, kpi.score, kpi.status) =
                        (node.value, node.target, node.score, node.status);
                    (kpi.children_scored, kpi.children_total) =
                        (node.segments_scored, node.segments);
                    kpis.push(kpi);
                }
                set_rollup(&mut objective, &kpi_scores, o.rollup);
                objective_scores.push((objective.score, o.weight));
                below.push(objective);
                below.extend(kpis);
            }
            set_rollup(&mut perspective, &objective_scores, p.rollup);
            perspective_scores.push((perspective.score, p.weight));
            tree.push(perspective);
            tree.extend(below);
        }
        set_rollup(&mut overall, &perspective_scores, card.rollup);
        rows.push(overall);
        rows.extend(tree);
    }
    rows
}

/// The scorecard periods: every period at the scorecard's grain that some KPI
/// has a value for, up to the one containing `as_of`.
fn periods(series: &[&KpiSeries], grain: Grain, as_of: NaiveDate) -> BTreeSet<NaiveDate> {
    let mut periods = BTreeSet::new();
    for s in series {
        for v in &s.values {
            if s.kpi.grain <= grain {
                periods.insert(period::start_of(grain, v.period_start));
            } else {
                let mut p = period::start_of(grain, v.period_start);
                while p <= v.period_end && p <= as_of {
                    periods.insert(p);
                    p = period::shift(grain, p, 1);
                }
            }
        }
    }
    periods
}

/// Combines the children's scores into the node's; children without a score
/// (or with weight 0) are left out and counted.
fn set_rollup(node: &mut ScorecardRow, children: &[(Option<f64>, f64)], rollup: Rollup) {
    node.children_total = children.len();
    node.children_scored = children
        .iter()
        .filter(|(s, w)| s.is_some() && *w > 0.0)
        .count();
    node.score = combine(children, rollup);
    node.status = node.score.map_or(Status::NoData, Status::from_score);
}

/// Weighted mean of the scored children (weights relative), or the worst of them.
pub fn combine(children: &[(Option<f64>, f64)], rollup: Rollup) -> Option<f64> {
    let scored = children
        .iter()
        .filter_map(|(s, w)| s.map(|s| (s, *w)))
        .filter(|(_, w)| *w > 0.0);
    match rollup {
        Rollup::WeightedMean => {
            let (sum, weight) = scored.fold((0.0, 0.0), |(sum, weight), (s, w)| {
                (sum + s * w, weight + w)
            });
            Some(sum / weight).filter(|s| weight > 0.0 && s.is_finite())
        }
        Rollup::WorstChild => scored.map(|(s, _)| s).min_by(f64::total_cmp),
    }
}

/// A KPI at one scorecard period.
#[derive(Debug, Default)]
struct KpiNode {
    value: Option<f64>,
    target: Option<f64>,
    score: Option<f64>,
    status: Status,
    segments: usize,
    segments_scored: usize,
}

/// One scorecard period, and what rolling up into it needs.
struct At<'a> {
    grain: Grain,
    start: NaiveDate,
    as_of: NaiveDate,
    targets: &'a Targets,
}

/// The scorecard period a value of a KPI at `kpi_grain` counts in, as a key:
/// for a KPI as fine as the scorecard or finer, the scorecard period holding
/// the value; for a coarser one, the value's own period, which
/// [`period_key`] gives for each scorecard period inside it.
fn value_key(kpi_grain: Grain, grain: Grain, value_start: NaiveDate) -> NaiveDate {
    if kpi_grain <= grain {
        period::start_of(grain, value_start)
    } else {
        value_start
    }
}

/// The key of [`value_key`] the values of the scorecard period `start` have.
fn period_key(kpi_grain: Grain, grain: Grain, start: NaiveDate) -> NaiveDate {
    if kpi_grain <= grain {
        start
    } else {
        period::start_of(kpi_grain, start)
    }
}

/// A KPI at one scorecard period, from its values `inside` that period.
fn kpi_node(series: &KpiSeries, inside: &[&KpiValue], at: &At) -> KpiNode {
    let kpi = &series.kpi;
    let mut by_segment: BTreeMap<Option<&str>, Vec<&KpiValue>> = BTreeMap::new();
    for &v in inside {
        by_segment.entry(v.segment.as_deref()).or_default().push(v);
    }
    let segments: Vec<Rolled> = by_segment
        .values()
        .map(|values| roll(series, at, values))
        .collect();

    let mut node = KpiNode {
        segments: if kpi.dimensions.is_empty() {
            0
        } else {
            segments.len()
        },
        segments_scored: if kpi.dimensions.is_empty() {
            0
        } else {
            segments.iter().filter(|s| s.score.is_some()).count()
        },
        ..KpiNode::default()
    };
    if let [only] = segments.as_slice()
        && kpi.dimensions.is_empty()
    {
        node.value = only.value;
        node.target = only.target;
    }
    let blocked = series.quality == crate::quality::QualityStatus::Failed;
    let scores: Vec<(Option<f64>, f64)> = segments.iter().map(|s| (s.score, 1.0)).collect();
    node.score = combine(&scores, Rollup::WeightedMean).filter(|_| !blocked);
    if blocked {
        node.segments_scored = 0;
    }
    node.status = match node.score {
        Some(score) => Status::from_score(score),
        None if series.quality == crate::quality::QualityStatus::Failed => Status::Blocked,
        None if segments.iter().any(|s| s.value.is_some()) => Status::NoTarget,
        None => Status::NoData,
    };
    node
}

/// One segment of a KPI rolled to the scorecard's grain, and scored there.
#[derive(Default)]
struct Rolled {
    value: Option<f64>,
    target: Option<f64>,
    score: Option<f64>,
}

fn roll(series: &KpiSeries, at: &At, values: &[&KpiValue]) -> Rolled {
    let kpi = &series.kpi;
    let grain = at.grain;
    // At the KPI's own grain (or coarser) the value was scored as it is.
    if kpi.grain >= grain {
        let v = values.last();
        return Rolled {
            value: v.and_then(|v| v.value),
            target: v.and_then(|v| v.target),
            score: v.and_then(|v| v.score),
        };
    }
    // The periods that count: those with a value (or both ratio parts).
    let counted: Vec<&KpiValue> = values
        .iter()
        .copied()
        .filter(|v| match series.measure {
            Measure::Ratio => v.numerator.is_some() && v.denominator.is_some(),
            Measure::Value => v.value.is_some(),
        })
        .collect();
    let Some(last) = counted.iter().max_by_key(|v| v.period_start) else {
        return Rolled::default();
    };
    let n = counted.len() as f64;
    let sum = |f: &dyn Fn(&KpiValue) -> Option<f64>| -> Option<f64> {
        counted.iter().map(|v| f(v)).sum::<Option<f64>>()
    };
    let aggregation = match series.measure {
        Measure::Ratio => None,
        Measure::Value => Some(kpi.aggregation.unwrap_or(Aggregation::Last)),
    };
    if aggregation == Some(Aggregation::Sum) {
        return roll_sum(series, at, &counted);
    }
    let value = match aggregation {
        None => match (sum(&|v| v.numerator), sum(&|v| v.denominator)) {
            (Some(num), Some(den)) if den != 0.0 => Some(num / den),
            _ => None,
        },
        Some(Aggregation::Sum) => sum(&|v| v.value),
        Some(Aggregation::Average) => sum(&|v| v.value).map(|s| s / n),
        Some(Aggregation::Last) => last.value,
    };
    // Goals combine like the values: summed for sums, averaged for averages and
    // rates, the last period's for `last`. A period without a goal leaves none.
    let goal = |f: &dyn Fn(&KpiValue) -> Option<f64>| match aggregation {
        Some(Aggregation::Last) => f(last),
        _ => sum(f).map(|s| s / n),
    };
    let goals = Goals {
        target: goal(&|v| v.target),
        red_flag: goal(&|v| v.red_flag),
        threshold_scale: 1.0,
    };
    scored(series, value, goals)
}

/// A sum over the KPI's periods elapsed in the scorecard period: a period
/// without a row adds 0 to the value and its goals to the goals, so a month in
/// progress is compared with the days it has had, and a day without sales
/// counts against the month.
fn roll_sum(series: &KpiSeries, at: &At, counted: &[&KpiValue]) -> Rolled {
    let kpi = &series.kpi;
    let Some(first) = counted.first() else {
        return Rolled::default();
    };
    let by_start: HashMap<NaiveDate, &KpiValue> =
        counted.iter().map(|v| (v.period_start, *v)).collect();
    let end = period::end_of(at.grain, at.start).min(at.as_of);
    let mut p = period::start_of(kpi.grain, at.start);
    if p < at.start {
        p = period::shift(kpi.grain, p, 1);
    }
    let (mut target, mut red_flag, mut n) = (Some(0.0), Some(0.0), 0.0);
    while p <= end {
        let (t, r) = match by_start.get(&p) {
            Some(v) => (v.target, v.red_flag),
            None => super::goals_of(at.targets, kpi, p, &first.dimensions),
        };
        target = target.zip(t).map(|(a, b)| a + b);
        red_flag = red_flag.zip(r).map(|(a, b)| a + b);
        n += 1.0;
        p = period::shift(kpi.grain, p, 1);
    }
    let value = counted.iter().map(|v| v.value).sum::<Option<f64>>();
    let goals = Goals {
        target,
        red_flag,
        threshold_scale: n,
    };
    scored(series, value, goals)
}

fn scored(series: &KpiSeries, value: Option<f64>, goals: Goals) -> Rolled {
    let kpi = &series.kpi;
    Rolled {
        value,
        target: goals.target,
        score: value.and_then(|value| method::score(&kpi.scoring, kpi.direction, value, goals)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_mean_leaves_out_children_without_scores() {
        let children = [(Some(80.0), 2.0), (None, 5.0), (Some(20.0), 1.0)];
        assert_eq!(combine(&children, Rollup::WeightedMean), Some(60.0));
        assert_eq!(combine(&children, Rollup::WorstChild), Some(20.0));
        assert_eq!(combine(&[(None, 1.0)], Rollup::WeightedMean), None);
        assert_eq!(combine(&[], Rollup::WorstChild), None);
        // Weight 0: shown, not counted.
        assert_eq!(
            combine(&[(Some(10.0), 0.0), (Some(50.0), 1.0)], Rollup::WorstChild),
            Some(50.0)
        );
    }

    #[test]
    fn values_are_found_in_the_scorecard_periods_they_count_in() {
        use Grain::*;
        // A value counts in a scorecard period when that period holds it (a KPI
        // as fine or finer), or when it is the value of the KPI's period that
        // holds the scorecard period (a coarser KPI).
        let counts_in = |kpi: Grain, card: Grain, value: NaiveDate, start: NaiveDate| {
            if kpi <= card {
                period::start_of(card, value) == start
            } else {
                value == period::start_of(kpi, start)
            }
        };
        let first = NaiveDate::from_ymd_opt(2023, 11, 1).unwrap();
        let days: Vec<NaiveDate> = first.iter_days().take(500).collect();
        let grains = [Day, Week, Month, Quarter, Year];
        for kpi in grains {
            for card in grains {
                let values: BTreeSet<NaiveDate> =
                    days.iter().map(|&d| period::start_of(kpi, d)).collect();
                let starts: BTreeSet<NaiveDate> =
                    days.iter().map(|&d| period::start_of(card, d)).collect();
                for &value in &values {
                    for &start in &starts {
                        assert_eq!(
                            value_key(kpi, card, value) == period_key(kpi, card, start),
                            counts_in(kpi, card, value, start),
                            "KPI by {kpi:?}, scorecard by {card:?}: {value} in {start}"
                        );
                    }
                }
            }
        }
    }
}
