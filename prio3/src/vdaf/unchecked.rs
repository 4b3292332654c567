//! Test-only forgery: shard a raw FLP encoding without the encoder's range checks.
//!
//! An honest client cannot produce an out-of-range report: `shard` refuses the measurement.
//! Tests of the aggregators need one (a malicious client's report must fail verification and
//! leave no trace in the sum), so this shards an arbitrary *encoded* field vector with the real
//! circuit, field and algorithm id: the report decodes under the real VDAF and only its proof
//! is wrong. Nothing in Quietwire's client or aggregators calls it.

use super::{Engine, Error, NONCE_SIZE, NUM_AGGREGATORS, Prio3Vdaf, Result, SEED_SIZE, encode};
use prio::field::{Field128, FieldElementWithInteger};
use prio::flp::gadgets::{Mul, ParallelSum};
use prio::flp::types::{Histogram, L1BoundSum, SumVec};
use prio::flp::{Flp, FlpError, Gadget, Type};
use prio::vdaf::Client;
use prio::vdaf::prio3::Prio3;
use prio::vdaf::xof::XofTurboShake128;

type Gadgets = ParallelSum<Field128, Mul>;

// The algorithm ids of draft-irtf-cfrg-vdaf-18 (SumVec, Histogram) and
// draft-ietf-ppm-l1-bound-sum-01 (L1BoundSum), as `prio` assigns them.
const SUM_VEC_ID: u32 = 0x0000_0003;
const HISTOGRAM_ID: u32 = 0x0000_0004;
const L1_BOUND_SUM_ID: u32 = 0x0000_0007;

/// `inner`'s circuit, proving whatever encoding it is handed.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Unchecked<T>(T);

impl<T: Type<Field = Field128>> Flp for Unchecked<T> {
    type Field = Field128;
    fn gadget(&self) -> Vec<Box<dyn Gadget<Field128>>> {
        self.0.gadget()
    }
    fn num_gadgets(&self) -> usize {
        self.0.num_gadgets()
    }
    fn valid(
        &self,
        gadgets: &mut Vec<Box<dyn Gadget<Field128>>>,
        input: &[Field128],
        joint_rand: &[Field128],
        num_shares: usize,
    ) -> std::result::Result<Vec<Field128>, FlpError> {
        self.0.valid(gadgets, input, joint_rand, num_shares)
    }
    fn input_len(&self) -> usize {
        self.0.input_len()
    }
    fn proof_len(&self) -> usize {
        self.0.proof_len()
    }
    fn verifier_len(&self) -> usize {
        self.0.verifier_len()
    }
    fn joint_rand_len(&self) -> usize {
        self.0.joint_rand_len()
    }
    fn eval_output_len(&self) -> usize {
        self.0.eval_output_len()
    }
    fn prove_rand_len(&self) -> usize {
        self.0.prove_rand_len()
    }
}

impl<T: Type<Field = Field128>> Type for Unchecked<T> {
    type Measurement = Vec<Field128>;
    type AggregateResult = T::AggregateResult;
    fn encode_measurement(
        &self,
        encoded: &Vec<Field128>,
    ) -> std::result::Result<Vec<Field128>, FlpError> {
        Ok(encoded.clone())
    }
    fn truncate(&self, input: Vec<Field128>) -> std::result::Result<Vec<Field128>, FlpError> {
        self.0.truncate(input)
    }
    fn decode_result(
        &self,
        data: &[Field128],
        n: usize,
    ) -> std::result::Result<T::AggregateResult, FlpError> {
        self.0.decode_result(data, n)
    }
    fn output_len(&self) -> usize {
        self.0.output_len()
    }
}

fn shard_with<T: Type<Field = Field128>>(
    circuit: std::result::Result<T, FlpError>,
    algorithm_id: u32,
    ctx: &[u8],
    encoded: &[i128],
    nonce: &[u8; NONCE_SIZE],
) -> Result<(Vec<u8>, Vec<u8>, Vec<u8>)> {
    let circuit = circuit.map_err(|e| Error::Internal(format!("circuit: {e}")))?;
    if encoded.len() != circuit.input_len() {
        return Err(Error::Measurement(format!(
            "the encoding has {} field elements; this VDAF's has {}",
            encoded.len(),
            circuit.input_len()
        )));
    }
    let half = Field128::modulus() / 2;
    let encoded = encoded
        .iter()
        .enumerate()
        .map(|(i, v)| {
            if v.unsigned_abs() > half {
                return Err(Error::Measurement(format!(
                    "encoded[{i}] = {v}: |v| >= p/2"
                )));
            }
            let magnitude = Field128::from(v.unsigned_abs());
            Ok(if *v < 0 { -magnitude } else { magnitude })
        })
        .collect::<Result<Vec<_>>>()?;
    let forger = Prio3::<_, XofTurboShake128, SEED_SIZE>::new(
        NUM_AGGREGATORS,
        1,
        algorithm_id,
        Unchecked(circuit),
    )
    .map_err(|e| Error::Internal(format!("{e}")))?;
    let (public, shares) = forger
        .shard(ctx, &encoded, nonce)
        .map_err(|e| Error::Measurement(format!("cannot shard: {e}")))?;
    let [leader, helper]: [_; 2] = shares
        .try_into()
        .map_err(|_| Error::Internal("prio returned other than two input shares".into()))?;
    Ok((encode(&public)?, encode(&leader)?, encode(&helper)?))
}

impl Prio3Vdaf {
    /// TESTS ONLY: (public share, leader share, helper share) of an arbitrary encoded input
    /// (signed field elements, `|v| < p/2`), proved with this VDAF's circuit but without any
    /// range check, as a malicious client would. Such a report fails verification.
    pub fn shard_unchecked_for_tests(
        &self,
        ctx: &[u8],
        encoded: &[i128],
        nonce: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>, Vec<u8>)> {
        let nonce = super::nonce_param(nonce)?;
        let (length, chunk) = (self.length, self.chunk_length);
        match self.engine {
            Engine::L1BoundSum(_) => shard_with(
                L1BoundSum::<Field128, Gadgets>::new(self.max_value, length, chunk),
                L1_BOUND_SUM_ID,
                ctx,
                encoded,
                nonce,
            ),
            Engine::SumVec(_) => shard_with(
                SumVec::<Field128, Gadgets>::new(self.max_value, length, chunk),
                SUM_VEC_ID,
                ctx,
                encoded,
                nonce,
            ),
            Engine::Histogram(_) => shard_with(
                Histogram::<Field128, Gadgets>::new(length, chunk),
                HISTOGRAM_ID,
                ctx,
                encoded,
                nonce,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [3; 32];

    fn verifies(vdaf: &Prio3Vdaf, encoded: &[i128]) -> Result<Vec<i128>> {
        let (ctx, n) = (b"ctx".as_slice(), [5u8; NONCE_SIZE]);
        let (public, leader, helper) = vdaf.shard_unchecked_for_tests(ctx, encoded, &n)?;
        let (s0, v0) = vdaf.verify_init(&KEY, ctx, 0, &n, &public, &leader)?;
        let (s1, v1) = vdaf.verify_init(&KEY, ctx, 1, &n, &public, &helper)?;
        let m = vdaf.verifier_shares_to_message(ctx, &v0, &v1)?;
        let (o0, o1) = (
            vdaf.verify_next(ctx, 0, &s0, &m)?,
            vdaf.verify_next(ctx, 1, &s1, &m)?,
        );
        vdaf.unshard(&vdaf.aggregate(0, &[o0])?, &vdaf.aggregate(1, &[o1])?, 1)
    }

    #[test]
    fn an_honest_encoding_verifies_and_a_forged_one_does_not() {
        // 2 entries of 4 bits (max 15), then the claimed norm: 3 bits LSB first, a high flag.
        let vdaf = Prio3Vdaf::l1_bound_sum(2, 4, 3).unwrap();
        assert_eq!(
            verifies(&vdaf, &[1, 0, 0, 0, 0, 1, 0, 0, 1, 1, 0, 0]).unwrap(),
            vec![1, 2]
        );
        let over = verifies(&vdaf, &[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]);
        assert!(matches!(over, Err(Error::Verify(_))), "{over:?}");
        let not_a_bit = verifies(&vdaf, &[99, 0, 0, 0, 0, 0, 0, 0, 99, 0, 0, 0]);
        assert!(matches!(not_a_bit, Err(Error::Verify(_))), "{not_a_bit:?}");
    }

    #[test]
    fn a_wrong_length_is_a_measurement_error() {
        let vdaf = Prio3Vdaf::l1_bound_sum(2, 4, 3).unwrap();
        let err = vdaf.shard_unchecked_for_tests(b"c", &[0; 5], &[0; NONCE_SIZE]);
        assert!(matches!(err, Err(Error::Measurement(_))), "{err:?}");
    }
}
