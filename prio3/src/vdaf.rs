//! Prio3 with two aggregators, bytes in and bytes out: the pure-Rust half of the binding.
//!
//! Everything a caller hands in is checked here before it reaches `prio`, because some crate
//! paths index or unwrap on input they assume valid (`Histogram::encode_measurement` indexes a
//! vector with the bucket number). Every failure is an [`Error`]; nothing here panics on input.
//! No Python types appear in this module, so `cargo test` exercises it directly.

use prio::codec::{CodecError, Encode, ParameterizedDecode};
use prio::field::{Field128, FieldElementWithInteger};
use prio::flp::Type;
use prio::vdaf::prio3::{
    Prio3, Prio3Histogram, Prio3InputShare, Prio3L1BoundSum, Prio3PublicShare, Prio3SumVec,
    Prio3VerifierMessage, Prio3VerifierShare, Prio3VerifyState, optimal_chunk_length,
};
use prio::vdaf::xof::XofTurboShake128;
use prio::vdaf::{
    Aggregatable, AggregateShare, Aggregator, Client, Collector, OutputShare, VdafError,
    VerifyTransition,
};
use std::fmt;

/// Length of the aggregators' shared verification key, in bytes.
pub const VERIFY_KEY_SIZE: usize = 32;
/// Length of a report's nonce, in bytes.
pub const NONCE_SIZE: usize = 16;
/// Widest entry `l1_bound_sum` and `sum_vec` accept, in bits.
pub const MAX_BITS: i64 = 64;
/// Most field elements an encoded measurement may have (16 MiB as a leader share). A bound on
/// memory: prio allocates proportionally, and an allocation failure aborts the process.
pub const MAX_ENCODED_LEN: usize = 1 << 20;

const SEED_SIZE: usize = VERIFY_KEY_SIZE;
const NUM_AGGREGATORS: u8 = 2;

/// Why an operation was refused. The binding maps each variant to one Python exception.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// A parameter or argument outside what the VDAF takes (sizes, ids, lengths, noise range).
    Parameter(String),
    /// Bytes that do not decode as the expected message.
    Decode(String),
    /// A measurement the VDAF cannot encode.
    Measurement(String),
    /// A report whose proof or joint randomness does not check out.
    Verify(String),
    /// A failure of `prio` itself that input checks should have made impossible.
    Internal(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (Self::Parameter(m)
        | Self::Decode(m)
        | Self::Measurement(m)
        | Self::Verify(m)
        | Self::Internal(m)) = self;
        f.write_str(m)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// Which Prio3 circuit an instance runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `Prio3L1BoundSum`: entries >= 0 whose sum is at most `2**bits - 1`.
    L1BoundSum,
    /// `Prio3SumVec`: every entry in `[0, 2**bits)`.
    SumVec,
    /// `Prio3Histogram`: one bucket index in `[0, length)`.
    Histogram,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::L1BoundSum => "l1_bound_sum",
            Kind::SumVec => "sum_vec",
            Kind::Histogram => "histogram",
        }
    }
}

/// One two-aggregator Prio3 instance; immutable, `Send + Sync`.
pub struct Prio3Vdaf {
    length: usize,
    bits: u32,
    chunk_length: usize,
    /// `2**bits - 1`: the largest entry (`sum_vec`) or entry sum (`l1_bound_sum`); unused by a
    /// histogram.
    max_value: u128,
    engine: Engine,
}

enum Engine {
    L1BoundSum(Typed<<Prio3L1BoundSum as Prio3Parts>::Flp>),
    SumVec(Typed<<Prio3SumVec as Prio3Parts>::Flp>),
    Histogram(Typed<<Prio3Histogram as Prio3Parts>::Flp>),
}

/// Names the FLP type inside a `Prio3` alias, so the aliases stay the crate's own.
trait Prio3Parts {
    type Flp: Type<Field = Field128>;
}

impl<T: Type<Field = Field128>> Prio3Parts for Prio3<T, XofTurboShake128, SEED_SIZE> {
    type Flp = T;
}

macro_rules! with_engine {
    ($self:expr, $e:ident => $body:expr) => {
        match &$self.engine {
            Engine::L1BoundSum($e) => $body,
            Engine::SumVec($e) => $body,
            Engine::Histogram($e) => $body,
        }
    };
}

impl Prio3Vdaf {
    /// `Prio3L1BoundSum` over `length` entries whose sum is at most `2**bits - 1`.
    pub fn l1_bound_sum(length: i64, bits: i64, chunk_length: i64) -> Result<Self> {
        let (length, bits, max_value) = vector_params(length, bits)?;
        // The norm is encoded as one more entry of `bits` bits.
        let encoded_len = encoded_len(length.checked_add(1), bits)?;
        let chunk_length = chunk_param(chunk_length, encoded_len)?;
        let vdaf =
            Prio3L1BoundSum::new_l1_bound_sum(NUM_AGGREGATORS, max_value, length, chunk_length)
                .map_err(param_error)?;
        Ok(Self {
            length,
            bits,
            chunk_length,
            max_value,
            engine: Engine::L1BoundSum(Typed::new(vdaf)?),
        })
    }

    /// `Prio3SumVec` over `length` entries, each in `[0, 2**bits)`.
    pub fn sum_vec(length: i64, bits: i64, chunk_length: i64) -> Result<Self> {
        let (length, bits, max_value) = vector_params(length, bits)?;
        let encoded_len = encoded_len(Some(length), bits)?;
        let chunk_length = chunk_param(chunk_length, encoded_len)?;
        let vdaf = Prio3SumVec::new_sum_vec(NUM_AGGREGATORS, max_value, length, chunk_length)
            .map_err(param_error)?;
        Ok(Self {
            length,
            bits,
            chunk_length,
            max_value,
            engine: Engine::SumVec(Typed::new(vdaf)?),
        })
    }

    /// `Prio3Histogram` over `length` buckets; a measurement is one bucket index.
    pub fn histogram(length: i64, chunk_length: i64) -> Result<Self> {
        let length = length_param(length)?;
        let encoded_len = encoded_len(Some(length), 1)?;
        let chunk_length = chunk_param(chunk_length, encoded_len)?;
        let vdaf = Prio3Histogram::new_histogram(NUM_AGGREGATORS, length, chunk_length)
            .map_err(param_error)?;
        Ok(Self {
            length,
            bits: 0,
            chunk_length,
            max_value: 1,
            engine: Engine::Histogram(Typed::new(vdaf)?),
        })
    }

    pub fn kind(&self) -> Kind {
        match self.engine {
            Engine::L1BoundSum(_) => Kind::L1BoundSum,
            Engine::SumVec(_) => Kind::SumVec,
            Engine::Histogram(_) => Kind::Histogram,
        }
    }

    pub fn length(&self) -> usize {
        self.length
    }

    /// Entry width in bits; 0 for a histogram.
    pub fn bits(&self) -> u32 {
        self.bits
    }

    pub fn chunk_length(&self) -> usize {
        self.chunk_length
    }

    /// Length of output and aggregate share vectors (field elements).
    pub fn output_length(&self) -> usize {
        with_engine!(self, e => e.vdaf.output_len())
    }

    /// The prime `p` of the field all three circuits use.
    pub fn field_modulus() -> u128 {
        Field128::modulus()
    }

    /// Client: split `measurement` into (public share, leader input share, helper input share).
    /// A histogram's measurement is `[bucket_index]`.
    pub fn shard(
        &self,
        ctx: &[u8],
        measurement: &[i128],
        nonce: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>, Vec<u8>)> {
        let nonce = nonce_param(nonce)?;
        match &self.engine {
            Engine::L1BoundSum(e) => {
                let entries = self.vector_measurement(measurement)?;
                let total: u128 = entries.iter().sum(); // <= length * (2**64 - 1): no overflow
                if total > self.max_value {
                    return Err(Error::Measurement(format!(
                        "measurement entries sum to {total}, over the bound {} (2**bits - 1)",
                        self.max_value
                    )));
                }
                e.shard(ctx, &entries, nonce)
            }
            Engine::SumVec(e) => e.shard(ctx, &self.vector_measurement(measurement)?, nonce),
            Engine::Histogram(e) => {
                let [index] = measurement else {
                    return Err(Error::Measurement(format!(
                        "a histogram measurement is one bucket index, got {} values",
                        measurement.len()
                    )));
                };
                let index = usize::try_from(*index)
                    .ok()
                    .filter(|i| *i < self.length)
                    .ok_or_else(|| {
                        Error::Measurement(format!(
                            "bucket index {index} is out of range [0, {})",
                            self.length
                        ))
                    })?;
                e.shard(ctx, &index, nonce)
            }
        }
    }

    /// Aggregator `agg_id` (0 leader, 1 helper): start verifying one report.
    /// Returns (encoded verify state, encoded verifier share).
    pub fn verify_init(
        &self,
        verify_key: &[u8],
        ctx: &[u8],
        agg_id: i64,
        nonce: &[u8],
        public_share: &[u8],
        input_share: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>)> {
        let verify_key: &[u8; VERIFY_KEY_SIZE] = verify_key.try_into().map_err(|_| {
            Error::Parameter(format!(
                "verify_key must be {VERIFY_KEY_SIZE} bytes, got {}",
                verify_key.len()
            ))
        })?;
        let agg_id = agg_id_param(agg_id)?;
        let nonce = nonce_param(nonce)?;
        with_engine!(self, e => e.verify_init(verify_key, ctx, agg_id, nonce, public_share, input_share))
    }

    /// Combine the two verifier shares; refuses a report whose proof fails.
    pub fn verifier_shares_to_message(
        &self,
        ctx: &[u8],
        leader_share: &[u8],
        helper_share: &[u8],
    ) -> Result<Vec<u8>> {
        with_engine!(self, e => e.verifier_shares_to_message(ctx, leader_share, helper_share))
    }

    /// Finish verifying: the aggregator's encoded output share.
    pub fn verify_next(
        &self,
        ctx: &[u8],
        agg_id: i64,
        state: &[u8],
        message: &[u8],
    ) -> Result<Vec<u8>> {
        let agg_id = agg_id_param(agg_id)?;
        with_engine!(self, e => e.verify_next(ctx, agg_id, state, message))
    }

    /// Sum output shares into an encoded aggregate share (zero for none).
    ///
    /// Output and aggregate shares are plain field vectors for both aggregators, so `agg_id`
    /// changes nothing; it is checked so that a caller's mix-up is still caught.
    pub fn aggregate<B: AsRef<[u8]>>(&self, agg_id: i64, output_shares: &[B]) -> Result<Vec<u8>> {
        agg_id_param(agg_id)?;
        with_engine!(self, e => e.aggregate(output_shares))
    }

    /// Sum of two encoded aggregate shares.
    pub fn merge(&self, agg_share: &[u8], other: &[u8]) -> Result<Vec<u8>> {
        with_engine!(self, e => e.merge(agg_share, other))
    }

    /// Add signed integers element-wise to an aggregate share, mod p. Each `|n|` must be below
    /// `p/2`, so that [`Self::unshard`] maps the sum back to the same signed value.
    pub fn add_noise(&self, agg_share: &[u8], noise: &[i128]) -> Result<Vec<u8>> {
        let expected = self.output_length();
        if noise.len() != expected {
            return Err(Error::Parameter(format!(
                "noise has {} values; the aggregate share has {expected}",
                noise.len()
            )));
        }
        let half = Field128::modulus() / 2; // (p - 1) / 2, p odd
        let noise = noise
            .iter()
            .enumerate()
            .map(|(i, n)| {
                if n.unsigned_abs() > half {
                    return Err(Error::Parameter(format!(
                        "noise[{i}] = {n}: |noise| must be below p/2 ({half})"
                    )));
                }
                let magnitude = Field128::from(n.unsigned_abs());
                Ok(if *n < 0 { -magnitude } else { magnitude })
            })
            .collect::<Result<Vec<_>>>()?;
        with_engine!(self, e => e.add_noise(agg_share, &noise))
    }

    /// Collector: the aggregate from both aggregate shares, as signed integers. A field value
    /// above p/2 stands for `value - p`: aggregator noise can be negative.
    pub fn unshard(
        &self,
        leader_agg_share: &[u8],
        helper_agg_share: &[u8],
        num_measurements: i64,
    ) -> Result<Vec<i128>> {
        let num_measurements = usize::try_from(num_measurements).map_err(|_| {
            Error::Parameter(format!(
                "num_measurements must be >= 0, got {num_measurements}"
            ))
        })?;
        let sums = with_engine!(self, e => e.unshard(leader_agg_share, helper_agg_share, num_measurements))?;
        Ok(sums.into_iter().map(to_signed).collect())
    }

    fn vector_measurement(&self, measurement: &[i128]) -> Result<Vec<u128>> {
        if measurement.len() != self.length {
            return Err(Error::Measurement(format!(
                "measurement has {} entries; this VDAF takes {}",
                measurement.len(),
                self.length
            )));
        }
        measurement
            .iter()
            .enumerate()
            .map(|(i, v)| {
                u128::try_from(*v)
                    .ok()
                    .filter(|v| *v <= self.max_value)
                    .ok_or_else(|| {
                        Error::Measurement(format!(
                            "measurement[{i}] = {v} is out of range [0, {}]",
                            self.max_value
                        ))
                    })
            })
            .collect()
    }
}

/// Field value to signed integer: values above (p - 1) / 2 are negatives.
fn to_signed(value: u128) -> i128 {
    let p = Field128::modulus();
    if value > p / 2 {
        // p - value < p / 2 < 2**127: fits.
        -((p - value) as i128)
    } else {
        value as i128
    }
}

/// One `prio` Prio3 type, with the byte-level operations on it.
struct Typed<T: Type<Field = Field128>> {
    vdaf: Prio3<T, XofTurboShake128, SEED_SIZE>,
    /// Shape for decoding verifier shares; see [`Typed::new`].
    share_shape: Prio3VerifyState<Field128, SEED_SIZE>,
}

impl<T> Typed<T>
where
    T: Type<Field = Field128, AggregateResult = Vec<u128>>,
{
    fn new(vdaf: Prio3<T, XofTurboShake128, SEED_SIZE>) -> Result<Self> {
        // prio decodes a verifier share against a verify state (for its verifier length and
        // whether a joint randomness part follows), but `verifier_shares_to_message` takes no
        // state, and the state's fields are private. Both facts depend only on the VDAF, so any
        // helper state of this VDAF serves: a helper state encodes as a seed, plus a second seed
        // when the circuit uses joint randomness (all three here do), and all-zero bytes of that
        // length decode to one.
        let share_shape = [2 * SEED_SIZE, SEED_SIZE]
            .into_iter()
            .find_map(|len| {
                Prio3VerifyState::get_decoded_with_param(&(&vdaf, 1usize), &vec![0u8; len]).ok()
            })
            .ok_or_else(|| Error::Internal("cannot derive the verifier share shape".into()))?;
        Ok(Self { vdaf, share_shape })
    }

    fn shard(
        &self,
        ctx: &[u8],
        measurement: &T::Measurement,
        nonce: &[u8; NONCE_SIZE],
    ) -> Result<(Vec<u8>, Vec<u8>, Vec<u8>)> {
        let (public_share, input_shares) = self
            .vdaf
            .shard(ctx, measurement, nonce)
            .map_err(|e| Error::Measurement(format!("cannot shard the measurement: {e}")))?;
        let [leader, helper]: [_; 2] = input_shares
            .try_into()
            .map_err(|_| Error::Internal("prio returned other than two input shares".into()))?;
        Ok((encode(&public_share)?, encode(&leader)?, encode(&helper)?))
    }

    fn verify_init(
        &self,
        verify_key: &[u8; VERIFY_KEY_SIZE],
        ctx: &[u8],
        agg_id: usize,
        nonce: &[u8; NONCE_SIZE],
        public_share: &[u8],
        input_share: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>)> {
        let public_share: Prio3PublicShare<SEED_SIZE> =
            decode(&self.vdaf, public_share, || "public_share".into())?;
        let input_share: Prio3InputShare<Field128, SEED_SIZE> =
            decode(&(&self.vdaf, agg_id), input_share, || {
                format!("input_share (as the {} share)", role(agg_id))
            })?;
        let (state, share) = self
            .vdaf
            .verify_init(
                verify_key,
                ctx,
                agg_id,
                &(),
                nonce,
                &public_share,
                &input_share,
            )
            .map_err(verify_error)?;
        Ok((encode(&state)?, encode(&share)?))
    }

    fn verifier_shares_to_message(
        &self,
        ctx: &[u8],
        leader_share: &[u8],
        helper_share: &[u8],
    ) -> Result<Vec<u8>> {
        let leader: Prio3VerifierShare<Field128, SEED_SIZE> =
            decode(&self.share_shape, leader_share, || "leader_share".into())?;
        let helper: Prio3VerifierShare<Field128, SEED_SIZE> =
            decode(&self.share_shape, helper_share, || "helper_share".into())?;
        let message = self
            .vdaf
            .verifier_shares_to_message(ctx, &(), [leader, helper])
            .map_err(verify_error)?;
        encode(&message)
    }

    fn verify_next(
        &self,
        ctx: &[u8],
        agg_id: usize,
        state: &[u8],
        message: &[u8],
    ) -> Result<Vec<u8>> {
        // A verify state's encoding does not say whose it is: the leader's holds its
        // measurement share, the helper's a seed. Hence `agg_id`.
        let state: Prio3VerifyState<Field128, SEED_SIZE> =
            decode(&(&self.vdaf, agg_id), state, || {
                format!("state (as the {} state)", role(agg_id))
            })?;
        let message: Prio3VerifierMessage<SEED_SIZE> =
            decode(&state, message, || "message".into())?;
        match self
            .vdaf
            .verify_next(ctx, state, message)
            .map_err(verify_error)?
        {
            VerifyTransition::Finish(output_share) => encode(&output_share),
            VerifyTransition::Continue(..) => Err(Error::Verify(
                "verification wants another round; Prio3 has one".into(),
            )),
        }
    }

    fn aggregate<B: AsRef<[u8]>>(&self, output_shares: &[B]) -> Result<Vec<u8>> {
        let mut total = self.vdaf.aggregate_init(&());
        for (i, bytes) in output_shares.iter().enumerate() {
            let share: OutputShare<Field128> = decode(&(&self.vdaf, &()), bytes.as_ref(), || {
                format!("output_shares[{i}]")
            })?;
            total.accumulate(&share).map_err(internal_error)?;
        }
        encode(&total)
    }

    fn merge(&self, agg_share: &[u8], other: &[u8]) -> Result<Vec<u8>> {
        let mut total = self.decode_agg_share(agg_share, "agg_share")?;
        let other = self.decode_agg_share(other, "other")?;
        total.merge(&other).map_err(internal_error)?;
        encode(&total)
    }

    fn add_noise(&self, agg_share: &[u8], noise: &[Field128]) -> Result<Vec<u8>> {
        let share = self.decode_agg_share(agg_share, "agg_share")?;
        let noised: Vec<Field128> = share
            .as_ref()
            .iter()
            .zip(noise)
            .map(|(value, n)| *value + *n)
            .collect();
        encode(&AggregateShare::from(noised))
    }

    fn unshard(&self, leader: &[u8], helper: &[u8], num_measurements: usize) -> Result<Vec<u128>> {
        let leader = self.decode_agg_share(leader, "leader_agg_share")?;
        let helper = self.decode_agg_share(helper, "helper_agg_share")?;
        self.vdaf
            .unshard(&(), [leader, helper], num_measurements)
            .map_err(internal_error)
    }

    fn decode_agg_share(&self, bytes: &[u8], what: &str) -> Result<AggregateShare<Field128>> {
        decode(&(&self.vdaf, &()), bytes, || what.into())
    }
}

fn decode<D, P>(param: &P, bytes: &[u8], what: impl FnOnce() -> String) -> Result<D>
where
    D: ParameterizedDecode<P>,
{
    D::get_decoded_with_param(param, bytes).map_err(|e| {
        let reason = match e {
            CodecError::Io(_) => "too short".to_string(),
            CodecError::BytesLeftOver(n) => format!("{n} bytes too long"),
            other => other.to_string(),
        };
        Error::Decode(format!(
            "{} does not decode ({} bytes): {reason}",
            what(),
            bytes.len()
        ))
    })
}

fn encode<E: Encode>(value: &E) -> Result<Vec<u8>> {
    value
        .get_encoded()
        .map_err(|e| Error::Internal(format!("encoding failed: {e}")))
}

fn role(agg_id: usize) -> &'static str {
    if agg_id == 0 { "leader" } else { "helper" }
}

fn verify_error(e: VdafError) -> Error {
    Error::Verify(format!("report refused: {e}"))
}

fn internal_error(e: VdafError) -> Error {
    Error::Internal(e.to_string())
}

fn param_error(e: VdafError) -> Error {
    Error::Parameter(e.to_string())
}

fn length_param(length: i64) -> Result<usize> {
    usize::try_from(length)
        .ok()
        .filter(|l| (1..=MAX_ENCODED_LEN).contains(l))
        .ok_or_else(|| {
            Error::Parameter(format!(
                "length must be between 1 and {MAX_ENCODED_LEN}, got {length}"
            ))
        })
}

/// (length, bits, 2**bits - 1) for the vector kinds.
fn vector_params(length: i64, bits: i64) -> Result<(usize, u32, u128)> {
    let length = length_param(length)?;
    if !(1..=MAX_BITS).contains(&bits) {
        return Err(Error::Parameter(format!(
            "bits must be between 1 and {MAX_BITS}, got {bits}"
        )));
    }
    let bits = bits as u32; // 1..=64
    Ok((length, bits, (1u128 << bits) - 1))
}

fn encoded_len(entries: Option<usize>, bits: u32) -> Result<usize> {
    entries
        .and_then(|n| n.checked_mul(bits as usize))
        .filter(|n| *n <= MAX_ENCODED_LEN)
        .ok_or_else(|| {
            Error::Parameter(format!(
                "the encoded measurement would exceed {MAX_ENCODED_LEN} field elements; \
                 lower length or bits"
            ))
        })
}

/// A chunk longer than the encoded measurement only pads the proof, so it is refused.
fn chunk_param(chunk_length: i64, encoded_len: usize) -> Result<usize> {
    usize::try_from(chunk_length)
        .ok()
        .filter(|c| (1..=encoded_len).contains(c))
        .ok_or_else(|| {
            Error::Parameter(format!(
                "chunk_length must be between 1 and {encoded_len} (the encoded measurement \
                 length), got {chunk_length}; {} gives the shortest proof",
                optimal_chunk_length(encoded_len)
            ))
        })
}

fn nonce_param(nonce: &[u8]) -> Result<&[u8; NONCE_SIZE]> {
    nonce.try_into().map_err(|_| {
        Error::Parameter(format!(
            "nonce must be {NONCE_SIZE} bytes, got {}",
            nonce.len()
        ))
    })
}

fn agg_id_param(agg_id: i64) -> Result<usize> {
    match agg_id {
        0 => Ok(0),
        1 => Ok(1),
        _ => Err(Error::Parameter(format!(
            "agg_id must be 0 (leader) or 1 (helper), got {agg_id}"
        ))),
    }
}

mod unchecked;

#[cfg(test)]
mod tests;
