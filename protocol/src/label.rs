//! The seven basic expressions, in the one canonical order used by every model output.

use core::fmt;
use core::str::FromStr;

/// A basic facial expression.
///
/// The discriminant is the class index in every model output. The order is RAF-DB's
/// (surprise, fear, disgust, happiness, sadness, anger, neutral), so RAF-DB's 1-based ids map
/// onto it by subtracting one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Expression {
    /// Raised brows, open mouth.
    Surprise = 0,
    /// Fear.
    Fear = 1,
    /// Disgust.
    Disgust = 2,
    /// Happiness (a smile).
    Happiness = 3,
    /// Sadness.
    Sadness = 4,
    /// Anger.
    Anger = 5,
    /// No particular expression.
    Neutral = 6,
}

impl Expression {
    /// Number of classes.
    pub const COUNT: usize = 7;

    /// Every expression, in class-index order.
    pub const ALL: [Expression; Self::COUNT] = [
        Expression::Surprise,
        Expression::Fear,
        Expression::Disgust,
        Expression::Happiness,
        Expression::Sadness,
        Expression::Anger,
        Expression::Neutral,
    ];

    /// The class index of this expression in model outputs.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The expression with class index `index`, if there is one.
    pub const fn from_index(index: usize) -> Option<Self> {
        if index < Self::COUNT {
            Some(Self::ALL[index])
        } else {
            None
        }
    }

    /// The canonical lower-case name (`"happiness"`, ...), as written in metadata and reports.
    pub const fn name(self) -> &'static str {
        match self {
            Expression::Surprise => "surprise",
            Expression::Fear => "fear",
            Expression::Disgust => "disgust",
            Expression::Happiness => "happiness",
            Expression::Sadness => "sadness",
            Expression::Anger => "anger",
            Expression::Neutral => "neutral",
        }
    }

    /// Parses a label as data sets spell it: canonical names, adjectives and common synonyms,
    /// ignoring ASCII case and surrounding whitespace.
    pub fn parse(label: &str) -> Result<Self, UnknownLabel> {
        const SYNONYMS: &[(&str, Expression)] = &[
            ("surprise", Expression::Surprise),
            ("surprised", Expression::Surprise),
            ("fear", Expression::Fear),
            ("fearful", Expression::Fear),
            ("afraid", Expression::Fear),
            ("scared", Expression::Fear),
            ("disgust", Expression::Disgust),
            ("disgusted", Expression::Disgust),
            ("happiness", Expression::Happiness),
            ("happy", Expression::Happiness),
            ("joy", Expression::Happiness),
            ("sadness", Expression::Sadness),
            ("sad", Expression::Sadness),
            ("anger", Expression::Anger),
            ("angry", Expression::Anger),
            ("neutral", Expression::Neutral),
            ("calm", Expression::Neutral),
        ];
        let label = label.trim();
        SYNONYMS
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(label))
            .map(|&(_, expression)| expression)
            .ok_or(UnknownLabel)
    }
}

impl fmt::Display for Expression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Expression {
    type Err = UnknownLabel;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A label that names none of the seven basic expressions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownLabel;

impl fmt::Display for UnknownLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not one of the 7 basic expressions (surprise, fear, disgust, happiness, sadness, anger, neutral)")
    }
}

impl core::error::Error for UnknownLabel {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_rafdb_order() {
        // RAF-DB ids 1..=7 must land on indices 0..=6 in this order.
        let names: [&str; 7] = Expression::ALL.map(Expression::name);
        assert_eq!(
            names,
            [
                "surprise",
                "fear",
                "disgust",
                "happiness",
                "sadness",
                "anger",
                "neutral"
            ]
        );
        for (i, e) in Expression::ALL.iter().enumerate() {
            assert_eq!(e.index(), i);
            assert_eq!(Expression::from_index(i), Some(*e));
        }
        assert_eq!(Expression::from_index(7), None);
    }

    #[test]
    fn parses_synonyms_case_insensitively() {
        assert_eq!(Expression::parse("Angry"), Ok(Expression::Anger));
        assert_eq!(Expression::parse(" HAPPY "), Ok(Expression::Happiness));
        assert_eq!(Expression::parse("fearful"), Ok(Expression::Fear));
        assert_eq!(Expression::parse("surprised"), Ok(Expression::Surprise));
        assert_eq!(Expression::parse("disgusted"), Ok(Expression::Disgust));
        assert_eq!(Expression::parse("sad"), Ok(Expression::Sadness));
        assert_eq!("neutral".parse(), Ok(Expression::Neutral));
        assert_eq!(Expression::parse("contempt"), Err(UnknownLabel));
        assert_eq!(Expression::parse(""), Err(UnknownLabel));
    }

    #[test]
    fn canonical_names_round_trip() {
        for e in Expression::ALL {
            assert_eq!(Expression::parse(e.name()), Ok(e));
        }
    }
}
