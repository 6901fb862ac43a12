//! A deterministic mix of every engine output, for the sink's tests and benchmarks.

use sapphire_core::engine::{EngineOutput, Output};
use sapphire_core::event::{AgentId, ExecKind, ExecReport, Liquidity, RejectReason, Side, Signal};
use sapphire_core::fixed::{Money, Price, Quantity};
use sapphire_core::instrument::InstrumentId;
use sapphire_core::order::{Order, OrderAction, OrderType, TimeInForce};
use sapphire_core::portfolio::PnlSummary;
use sapphire_core::risk::{AlertKind, RiskAlert, RiskOutput, RiskRefusal};

/// `n` outputs of every kind (about 30% orders, 30% executions, 20% signals, 10% risk, 10%
/// PnL) with varied exact values, the same for the same `seed`. Event times start at
/// 2023-11-14 22:13:20 UTC and advance about 1 ms per output.
pub fn sample_outputs(n: usize, seed: u64) -> Vec<Output> {
    let mut x = seed | 1;
    let mut next = move || {
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let mut out = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let r = next();
        let ts = 1_700_000_000_000_000_000 + i * 1_000_000 + r % 1_000;
        let instrument = InstrumentId((r >> 8) as u32 % 8);
        let agent = AgentId((r >> 16) as u16 % 6);
        let side = if r & 1 == 0 { Side::Buy } else { Side::Sell };
        let price = Price::from_raw(((r >> 20) % 100_000_000_000_000) as i64 + 1);
        let qty = Quantity::from_raw(((r >> 24) % 10_000_000_000) as i64 + 1);
        let money = |v: u64| Money::from_raw((v % 2_000_000_000_000) as i64 - 1_000_000_000_000);
        let output = match r % 20 {
            0..=5 => EngineOutput::Order(Order {
                ts_event: ts,
                origin_recv: ts - 500,
                client_order_id: (1 << 48) | (i << 8) | u64::from(agent.0),
                intent_id: (i << 8) | u64::from(agent.0),
                instrument,
                agent,
                action: if r % 7 == 0 { OrderAction::CancelAll } else { OrderAction::New },
                side,
                order_type: if r % 5 == 0 { OrderType::Market } else { OrderType::Limit },
                tif: [TimeInForce::Gtc, TimeInForce::Ioc, TimeInForce::PostOnly][(r % 3) as usize],
                reduce_only: r % 11 == 0,
                _pad: 0,
                price,
                qty,
            }),
            6..=11 => EngineOutput::Exec(ExecReport {
                ts_event: ts,
                ts_recv: ts + 20_000,
                instrument,
                agent,
                kind: [ExecKind::Ack, ExecKind::PartialFill, ExecKind::Fill, ExecKind::Canceled, ExecKind::Rejected][(r % 5) as usize],
                side,
                reason: RejectReason::ALL[(r % RejectReason::COUNT as u64) as usize],
                liquidity: [Liquidity::None, Liquidity::Maker, Liquidity::Taker][(r % 3) as usize],
                _pad: [0; 5],
                client_order_id: (1 << 48) | (i << 8),
                price,
                last_qty: qty,
                leaves_qty: Quantity::from_raw(qty.raw / 3),
                fee: money(next()),
            }),
            12..=15 => EngineOutput::Signal {
                signal: Signal {
                    ts_event: ts,
                    ts_recv: ts + 1_000,
                    instrument,
                    agent,
                    _pad: 0,
                    strength_bps: (r % 20_001) as i32 - 10_000,
                    confidence_bps: (r % 10_001) as u16,
                    _pad2: 0,
                    ttl_ns: 5_000_000_000,
                    signal_id: next(),
                },
                taken: r % 3 != 0,
            },
            16 => EngineOutput::Risk(RiskOutput::Refusal(RiskRefusal {
                ts_event: ts,
                intent_id: i << 8,
                instrument,
                agent,
                reason: RejectReason::ALL[(r % RejectReason::COUNT as u64) as usize],
                side,
                price,
                qty,
            })),
            17 => EngineOutput::Risk(RiskOutput::Alert(RiskAlert {
                ts_event: ts,
                kind: AlertKind::MarginLadder,
                agent,
                value: (r % 3) as i64,
            })),
            _ => {
                let capital = Money::from_units(1_000);
                let (realized, unrealized, fees) = (money(next()), money(next()), Money::from_raw((r % 1_000_000_000) as i64));
                let summary = PnlSummary {
                    realized,
                    unrealized,
                    fees,
                    capital,
                    equity: capital + realized + unrealized - fees,
                    gross_exposure: Money::from_raw((next() % 2_000_000_000_000) as i64),
                };
                if r % 20 == 18 {
                    EngineOutput::Pnl { ts_event: ts, total: summary }
                } else {
                    EngineOutput::AgentPnl { ts_event: ts, agent, summary }
                }
            }
        };
        out.push(Output { seq: i as i64 * 3, output });
    }
    out
}
