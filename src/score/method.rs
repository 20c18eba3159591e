//! Scoring methods: a KPI value and its goals in, a score from 0 to 100 out.
//! Every method puts the target at 66.7 (green from there) so that scores of
//! KPIs measured in different units can be averaged up the scorecard.

use crate::config::{Direction, Scoring};

/// The score of a value exactly on the red flag (one third of the scale).
pub const RED_FLAG_SCORE: f64 = 100.0 / 3.0;
/// The score of a value exactly on target (two thirds of the scale).
pub const TARGET_SCORE: f64 = 200.0 / 3.0;
/// Status bands in tenths of a point: red below 33.3, amber below 66.7, green
/// from 66.7. A status follows the score as shown, to one decimal, so the red
/// flag's 33.33... is amber and a threshold point written as 33.3 is too.
const AMBER_FROM_TENTHS: i64 = 333;
const GREEN_FROM_TENTHS: i64 = 667;

/// What a score means, or why there is none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Status {
    Green,
    Amber,
    Red,
    /// No value for the period.
    #[default]
    NoData,
    /// A value, but no target to score it against.
    NoTarget,
    /// A failed `error` check on a source it reads: not scored, not reported as good or bad.
    Blocked,
}

impl Status {
    pub fn from_score(score: f64) -> Status {
        let tenths = (score * 10.0).round() as i64;
        if tenths >= GREEN_FROM_TENTHS {
            Status::Green
        } else if tenths >= AMBER_FROM_TENTHS {
            Status::Amber
        } else {
            Status::Red
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Green => "green",
            Status::Amber => "amber",
            Status::Red => "red",
            Status::NoData => "no_data",
            Status::NoTarget => "no_target",
            Status::Blocked => "blocked",
        }
    }
}

/// The goals a value is scored against, for one period and segment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Goals {
    pub target: Option<f64>,
    pub red_flag: Option<f64>,
    /// Multiplies threshold values: `n` when the value is a sum of `n` periods.
    pub threshold_scale: f64,
}

/// Scores `value`; `None` when the method lacks a goal it needs.
pub fn score(
    scoring: &Scoring,
    direction: Option<Direction>,
    value: f64,
    goals: Goals,
) -> Option<f64> {
    let score = match scoring {
        Scoring::GoalRedFlag => goal_red_flag(value, goals.target?, goals.red_flag?)?,
        Scoring::PercentOfTarget => percent_of_target(
            value,
            goals.target?,
            direction == Some(Direction::LowerIsBetter),
        ),
        Scoring::Thresholds(points) => thresholds(value, points, goals.threshold_scale),
    };
    score.is_finite().then_some(score)
}

/// The line through (red_flag, 33.3) and (target, 66.7), clamped to [0, 100]:
/// lower-is-better when the target is below the red flag.
pub fn goal_red_flag(value: f64, target: f64, red_flag: f64) -> Option<f64> {
    if target == red_flag {
        return None;
    }
    let slope = (TARGET_SCORE - RED_FLAG_SCORE) / (target - red_flag);
    Some(clamp(RED_FLAG_SCORE + (value - red_flag) * slope))
}

/// Proportional to the share of the target reached, with the target at 66.7:
/// 50% scores 33.3 and 150% scores 100. Measured as the distance from the
/// target relative to its size, so negative targets work the same way. A target
/// of 0 has no size: on target scores 66.7, better 100, worse 0.
pub fn percent_of_target(value: f64, target: f64, lower_is_better: bool) -> f64 {
    let better = if lower_is_better {
        target - value
    } else {
        value - target
    };
    if target == 0.0 {
        return match better {
            b if b > 0.0 => 100.0,
            b if b < 0.0 => 0.0,
            _ => TARGET_SCORE,
        };
    }
    clamp(TARGET_SCORE * (1.0 + better / target.abs()))
}

/// Linear between `(value, score)` points (values increasing), flat beyond the
/// first and last. `scale` multiplies the values (for sums of several periods).
pub fn thresholds(value: f64, points: &[(f64, f64)], scale: f64) -> f64 {
    let at = |i: usize| (points[i].0 * scale, points[i].1);
    let Some(last) = points.len().checked_sub(1) else {
        return f64::NAN;
    };
    if value <= at(0).0 {
        return at(0).1;
    }
    if value >= at(last).0 {
        return at(last).1;
    }
    let i = (1..=last).find(|&i| value < at(i).0).unwrap_or(last);
    let ((x0, y0), (x1, y1)) = (at(i - 1), at(i));
    clamp(y0 + (value - x0) * (y1 - y0) / (x1 - x0))
}

fn clamp(score: f64) -> f64 {
    score.clamp(0.0, 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn near(a: f64, b: f64) -> bool {
        (a - b).abs() < 0.05
    }

    #[test]
    fn goal_red_flag_worked_example() {
        // Target 700, red flag 500.
        let s = |v| goal_red_flag(v, 700.0, 500.0).unwrap();
        assert_eq!(s(300.0), 0.0);
        assert!(near(s(500.0), 33.3));
        assert!(near(s(700.0), 66.7));
        assert!(near(s(800.0), 83.3));
        assert_eq!(s(900.0), 100.0);
        assert_eq!(s(1500.0), 100.0);
        assert_eq!(Status::from_score(s(500.0)), Status::Amber);
        assert_eq!(Status::from_score(s(700.0)), Status::Green);
        assert_eq!(Status::from_score(s(499.0)), Status::Red);
        assert_eq!(Status::from_score(s(699.0)), Status::Amber);
        // Bands on the score as shown: 33.3 and 66.7 written as thresholds count.
        assert_eq!(Status::from_score(33.3), Status::Amber);
        assert_eq!(Status::from_score(33.24), Status::Red);
        assert_eq!(Status::from_score(66.7), Status::Green);
    }

    #[test]
    fn goal_red_flag_lower_is_better() {
        // Target 10 hours, red flag 15 hours.
        let s = |v| goal_red_flag(v, 10.0, 15.0).unwrap();
        assert!(near(s(15.0), 33.3));
        assert!(near(s(10.0), 66.7));
        assert_eq!(s(5.0), 100.0);
        assert_eq!(s(20.0), 0.0);
        assert!(near(s(12.5), 50.0));
        assert_eq!(goal_red_flag(1.0, 3.0, 3.0), None);
    }

    #[test]
    fn thresholds_interpolate_and_hold_flat_beyond() {
        let baseline_target_stretch = [(80.0, 0.0), (95.0, 66.7), (100.0, 100.0)];
        let s = |v| thresholds(v, &baseline_target_stretch, 1.0);
        assert_eq!(s(70.0), 0.0);
        assert_eq!(s(80.0), 0.0);
        assert!(near(s(87.5), 33.35));
        assert_eq!(s(95.0), 66.7);
        assert!(near(s(97.5), 83.35));
        assert_eq!(s(120.0), 100.0);
        // A band: best in the middle, worse on both sides.
        let band = [(90.0, 0.0), (100.0, 100.0), (110.0, 0.0)];
        assert_eq!(thresholds(100.0, &band, 1.0), 100.0);
        assert_eq!(thresholds(95.0, &band, 1.0), 50.0);
        assert_eq!(thresholds(105.0, &band, 1.0), 50.0);
        assert_eq!(thresholds(85.0, &band, 1.0), 0.0);
        assert_eq!(thresholds(115.0, &band, 1.0), 0.0);
        // Summed over 3 periods, the values scale with the sum.
        assert_eq!(thresholds(300.0, &band, 3.0), 100.0);
    }

    #[test]
    fn percent_of_target_scales_with_the_target() {
        assert!(near(percent_of_target(100.0, 100.0, false), 66.7));
        assert!(near(percent_of_target(50.0, 100.0, false), 33.3));
        assert_eq!(percent_of_target(150.0, 100.0, false), 100.0);
        assert_eq!(percent_of_target(-10.0, 100.0, false), 0.0);
        // Lower is better: 10% over the target is 90% of it.
        assert!(near(percent_of_target(110.0, 100.0, true), 60.0));
        // Negative target (a loss limit of -100): -50 is better, -150 worse.
        assert_eq!(percent_of_target(-50.0, -100.0, false), 100.0);
        assert!(near(percent_of_target(-150.0, -100.0, false), 33.3));
        // Target 0: on target 66.7, better 100, worse 0.
        assert!(near(percent_of_target(0.0, 0.0, false), 66.7));
        assert_eq!(percent_of_target(3.0, 0.0, false), 100.0);
        assert_eq!(percent_of_target(-3.0, 0.0, false), 0.0);
        assert_eq!(percent_of_target(3.0, 0.0, true), 0.0);
    }

    #[test]
    fn missing_goals_give_no_score() {
        let goals = Goals {
            target: Some(10.0),
            red_flag: None,
            threshold_scale: 1.0,
        };
        assert_eq!(score(&Scoring::GoalRedFlag, None, 5.0, goals), None);
        assert!(score(&Scoring::PercentOfTarget, None, 5.0, goals).is_some());
        assert_eq!(
            score(&Scoring::PercentOfTarget, None, 5.0, Goals::default()),
            None
        );
    }
}
