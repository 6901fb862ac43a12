//! The structured answers LLM agents ask for. Each is parsed strictly (unknown fields,
//! missing fields and wrong types are schema violations) and range-checked.

use super::Answer;
use serde::Deserialize;
use serde_json::{json, Value};

/// Longest reason/explanation accepted, characters.
pub const MAX_REASON_CHARS: usize = 600;

fn check_reason(field: &str, s: &str) -> Result<(), String> {
    if s.chars().count() > MAX_REASON_CHARS {
        return Err(format!("{field} is longer than {MAX_REASON_CHARS} characters"));
    }
    Ok(())
}

fn check_strength(field: &str, v: i64) -> Result<(), String> {
    if !(-10_000..=10_000).contains(&v) {
        return Err(format!("{field} {v} is outside -10000..=10000"));
    }
    Ok(())
}

fn check_confidence(field: &str, v: i64) -> Result<(), String> {
    if !(0..=10_000).contains(&v) {
        return Err(format!("{field} {v} is outside 0..=10000"));
    }
    Ok(())
}

/// The fast trader's answer: one trade signal with its reasoning.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TradeAnswer {
    /// −10000 (all-in short) ..= 10000 (all-in long); 0 is flat.
    pub strength_bps: i64,
    /// 0 ..= 10000.
    pub confidence_bps: i64,
    /// How long the view holds, seconds (1 ..= 3600).
    pub ttl_seconds: i64,
    /// Why.
    pub reasoning: String,
}

impl Answer for TradeAnswer {
    const NAME: &'static str = "trade_signal";

    fn schema() -> Value {
        json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["strength_bps", "confidence_bps", "ttl_seconds", "reasoning"],
            "properties": {
                "strength_bps": {"type": "integer", "minimum": -10000, "maximum": 10000,
                    "description": "direction and size: -10000 all-in short, 0 flat, 10000 all-in long"},
                "confidence_bps": {"type": "integer", "minimum": 0, "maximum": 10000},
                "ttl_seconds": {"type": "integer", "minimum": 1, "maximum": 3600},
                "reasoning": {"type": "string", "maxLength": MAX_REASON_CHARS},
            }
        })
    }

    fn validate(&self) -> Result<(), String> {
        check_strength("strength_bps", self.strength_bps)?;
        check_confidence("confidence_bps", self.confidence_bps)?;
        if !(1..=3_600).contains(&self.ttl_seconds) {
            return Err(format!("ttl_seconds {} is outside 1..=3600", self.ttl_seconds));
        }
        check_reason("reasoning", &self.reasoning)
    }
}

/// One symbol's news sentiment.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SymbolSentiment {
    /// The symbol, one of those listed in the prompt.
    pub symbol: String,
    /// −10000 (very bearish) ..= 10000 (very bullish).
    pub sentiment_bps: i64,
    /// 0 ..= 10000.
    pub confidence_bps: i64,
    /// Why.
    pub reason: String,
}

/// The sentiment agent's answer: one entry per symbol the headlines concern.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SentimentAnswer {
    /// Per-symbol sentiment.
    pub items: Vec<SymbolSentiment>,
}

impl Answer for SentimentAnswer {
    const NAME: &'static str = "news_sentiment";

    fn schema() -> Value {
        json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["items"],
            "properties": {
                "items": {"type": "array", "maxItems": 64, "items": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["symbol", "sentiment_bps", "confidence_bps", "reason"],
                    "properties": {
                        "symbol": {"type": "string"},
                        "sentiment_bps": {"type": "integer", "minimum": -10000, "maximum": 10000},
                        "confidence_bps": {"type": "integer", "minimum": 0, "maximum": 10000},
                        "reason": {"type": "string", "maxLength": MAX_REASON_CHARS},
                    }
                }}
            }
        })
    }

    fn validate(&self) -> Result<(), String> {
        if self.items.len() > 64 {
            return Err(format!("{} items, at most 64", self.items.len()));
        }
        for it in &self.items {
            check_strength("sentiment_bps", it.sentiment_bps)?;
            check_confidence("confidence_bps", it.confidence_bps)?;
            check_reason("reason", &it.reason)?;
        }
        Ok(())
    }
}

/// A market regime, as the strategy agent classifies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Regime {
    /// Persistent moves: favour momentum and breakout.
    Trending,
    /// Moves that revert: favour mean reversion.
    MeanReverting,
    /// Large, erratic moves: favour breakout, cut the rest.
    Volatile,
    /// Little movement: favour order-flow imbalance.
    Quiet,
}

/// Weights (bps, 0 ..= 20000; 10000 = 1.0) the strategy agent gives the rule agents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleWeights {
    /// Momentum agent.
    pub momentum_bps: i64,
    /// Mean-reversion agent.
    pub mean_reversion_bps: i64,
    /// Order-flow imbalance agent.
    pub imbalance_bps: i64,
    /// Volatility breakout agent.
    pub breakout_bps: i64,
}

/// The strategy agent's answer.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegimeAnswer {
    /// The regime.
    pub regime: Regime,
    /// The rule agents' weights.
    pub weights: RuleWeights,
    /// Why.
    pub reason: String,
}

impl Answer for RegimeAnswer {
    const NAME: &'static str = "market_regime";

    fn schema() -> Value {
        let w = json!({"type": "integer", "minimum": 0, "maximum": 20000});
        json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["regime", "weights", "reason"],
            "properties": {
                "regime": {"type": "string", "enum": ["trending", "mean_reverting", "volatile", "quiet"]},
                "weights": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["momentum_bps", "mean_reversion_bps", "imbalance_bps", "breakout_bps"],
                    "properties": {"momentum_bps": w, "mean_reversion_bps": w, "imbalance_bps": w, "breakout_bps": w}
                },
                "reason": {"type": "string", "maxLength": MAX_REASON_CHARS},
            }
        })
    }

    fn validate(&self) -> Result<(), String> {
        let w = &self.weights;
        for (name, v) in [
            ("momentum_bps", w.momentum_bps),
            ("mean_reversion_bps", w.mean_reversion_bps),
            ("imbalance_bps", w.imbalance_bps),
            ("breakout_bps", w.breakout_bps),
        ] {
            if !(0..=20_000).contains(&v) {
                return Err(format!("weights.{name} {v} is outside 0..=20000"));
            }
        }
        check_reason("reason", &self.reason)
    }
}

/// The arbitrator's LLM verdict on a conflict.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerdictAnswer {
    /// The resolved view, −10000 ..= 10000.
    pub strength_bps: i64,
    /// 0 ..= 10000.
    pub confidence_bps: i64,
    /// Why.
    pub explanation: String,
}

impl Answer for VerdictAnswer {
    const NAME: &'static str = "arbitration_verdict";

    fn schema() -> Value {
        json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["strength_bps", "confidence_bps", "explanation"],
            "properties": {
                "strength_bps": {"type": "integer", "minimum": -10000, "maximum": 10000},
                "confidence_bps": {"type": "integer", "minimum": 0, "maximum": 10000},
                "explanation": {"type": "string", "maxLength": MAX_REASON_CHARS},
            }
        })
    }

    fn validate(&self) -> Result<(), String> {
        check_strength("strength_bps", self.strength_bps)?;
        check_confidence("confidence_bps", self.confidence_bps)?;
        check_reason("explanation", &self.explanation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<A: Answer>(s: &str) -> Result<A, String> {
        let a: A = serde_json::from_str(s).map_err(|e| format!("schema: {e}"))?;
        a.validate().map_err(|e| format!("range: {e}"))?;
        Ok(a)
    }

    #[test]
    fn answers_are_parsed_strictly() {
        let ok = r#"{"strength_bps":2500,"confidence_bps":7000,"ttl_seconds":30,"reasoning":"bid pressure"}"#;
        assert_eq!(parse::<TradeAnswer>(ok).unwrap().strength_bps, 2500);
        let cases = [
            (r#"{"strength_bps":2500,"confidence_bps":7000,"ttl_seconds":30}"#, "schema"),
            (r#"{"strength_bps":2500,"confidence_bps":7000,"ttl_seconds":30,"reasoning":"x","extra":1}"#, "schema"),
            (r#"{"strength_bps":0.25,"confidence_bps":7000,"ttl_seconds":30,"reasoning":"x"}"#, "schema"),
            (r#"{"strength_bps":"long","confidence_bps":7000,"ttl_seconds":30,"reasoning":"x"}"#, "schema"),
            (r#"{"strength_bps":12000,"confidence_bps":7000,"ttl_seconds":30,"reasoning":"x"}"#, "range"),
            (r#"{"strength_bps":100,"confidence_bps":-1,"ttl_seconds":30,"reasoning":"x"}"#, "range"),
            (r#"{"strength_bps":100,"confidence_bps":1,"ttl_seconds":0,"reasoning":"x"}"#, "range"),
        ];
        for (text, want) in cases {
            let e = parse::<TradeAnswer>(text).unwrap_err();
            assert!(e.starts_with(want), "{text}: {e}");
        }
        let regime = r#"{"regime":"trending","weights":{"momentum_bps":15000,"mean_reversion_bps":5000,"imbalance_bps":10000,"breakout_bps":12000},"reason":"r"}"#;
        assert_eq!(parse::<RegimeAnswer>(regime).unwrap().regime, Regime::Trending);
        assert!(parse::<RegimeAnswer>(&regime.replace("trending", "sideways")).unwrap_err().starts_with("schema"));
        assert!(parse::<RegimeAnswer>(&regime.replace("15000", "25000")).unwrap_err().starts_with("range"));
        let long = format!(r#"{{"strength_bps":1,"confidence_bps":1,"explanation":"{}"}}"#, "x".repeat(601));
        assert!(parse::<VerdictAnswer>(&long).unwrap_err().starts_with("range"));
    }
}
