//! `quietwire_prio`: Prio3 (draft-irtf-cfrg-vdaf-18, via ISRG's `prio` crate) for Python.
//!
//! The seam only: Python values are converted here and handed to [`vdaf`], whose errors become
//! one exception class each. Crypto work runs detached from the interpreter, so an asyncio
//! service can run it in a worker thread. A panic inside `prio` is caught and raised as
//! `Prio3Error` rather than crossing the boundary as `PanicException`.

mod vdaf;

use pyo3::create_exception;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyInt};
use std::panic::{AssertUnwindSafe, catch_unwind};

use vdaf::{Error, Prio3Vdaf};

create_exception!(
    quietwire_prio,
    Prio3Error,
    PyValueError,
    "Root of the binding's errors; raised as such for bad parameters and argument sizes."
);
create_exception!(
    quietwire_prio,
    DecodeError,
    Prio3Error,
    "Bytes that do not decode as the expected message."
);
create_exception!(
    quietwire_prio,
    MeasurementError,
    Prio3Error,
    "A measurement the VDAF cannot encode (out of range, wrong length)."
);
create_exception!(
    quietwire_prio,
    VerifyError,
    Prio3Error,
    "A report whose proof or joint randomness fails verification."
);

fn to_py_err(error: Error) -> PyErr {
    match error {
        Error::Parameter(m) | Error::Internal(m) => Prio3Error::new_err(m),
        Error::Decode(m) => DecodeError::new_err(m),
        Error::Measurement(m) => MeasurementError::new_err(m),
        Error::Verify(m) => VerifyError::new_err(m),
    }
}

/// Run `work` without the interpreter attached; a panic becomes an `Error::Internal`.
fn detached<T: Send>(py: Python<'_>, work: impl FnOnce() -> vdaf::Result<T> + Send) -> PyResult<T> {
    py.detach(|| {
        catch_unwind(AssertUnwindSafe(work)).unwrap_or_else(|panic| {
            let reason = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown".into());
            Err(Error::Internal(format!("prio panicked: {reason}")))
        })
    })
    .map_err(to_py_err)
}

/// Python ints to `i128`; an int too large for that is out of any range the VDAF takes.
fn int_list(
    values: &[Bound<'_, PyAny>],
    name: &str,
    out_of_range: impl Fn(String) -> PyErr,
    limit: &str,
) -> PyResult<Vec<i128>> {
    values
        .iter()
        .enumerate()
        .map(|(i, value)| {
            value.extract::<i128>().map_err(|_| {
                if value.is_instance_of::<PyInt>() {
                    out_of_range(format!("{name}[{i}] = {value} is out of range: {limit}"))
                } else {
                    PyTypeError::new_err(format!(
                        "{name}[{i}] must be an int, not {}",
                        value
                            .get_type()
                            .name()
                            .map_or_else(|_| "?".into(), |n| n.to_string())
                    ))
                }
            })
        })
        .collect()
}

/// One Prio3 VDAF instance with 2 aggregators, immutable.
#[pyclass(frozen, module = "quietwire_prio", name = "Prio3")]
struct PyPrio3 {
    inner: Prio3Vdaf,
}

#[pymethods]
impl PyPrio3 {
    #[classattr]
    const VERIFY_KEY_SIZE: usize = vdaf::VERIFY_KEY_SIZE;
    #[classattr]
    const NONCE_SIZE: usize = vdaf::NONCE_SIZE;

    /// Prio3L1BoundSum: `length` entries >= 0 whose sum is at most 2**bits - 1.
    #[staticmethod]
    fn l1_bound_sum(length: i64, bits: i64, chunk_length: i64) -> PyResult<Self> {
        let inner = Prio3Vdaf::l1_bound_sum(length, bits, chunk_length).map_err(to_py_err)?;
        Ok(Self { inner })
    }

    /// Prio3SumVec: `length` entries, each in [0, 2**bits).
    #[staticmethod]
    fn sum_vec(length: i64, bits: i64, chunk_length: i64) -> PyResult<Self> {
        let inner = Prio3Vdaf::sum_vec(length, bits, chunk_length).map_err(to_py_err)?;
        Ok(Self { inner })
    }

    /// Prio3Histogram: `length` buckets; a measurement is `[bucket_index]`.
    #[staticmethod]
    fn histogram(length: i64, chunk_length: i64) -> PyResult<Self> {
        let inner = Prio3Vdaf::histogram(length, chunk_length).map_err(to_py_err)?;
        Ok(Self { inner })
    }

    #[getter]
    fn kind(&self) -> &'static str {
        self.inner.kind().name()
    }

    #[getter]
    fn length(&self) -> usize {
        self.inner.length()
    }

    #[getter]
    fn bits(&self) -> u32 {
        self.inner.bits()
    }

    #[getter]
    fn chunk_length(&self) -> usize {
        self.inner.chunk_length()
    }

    #[getter]
    fn field_modulus(&self) -> u128 {
        Prio3Vdaf::field_modulus()
    }

    #[getter]
    fn verify_key_size(&self) -> usize {
        vdaf::VERIFY_KEY_SIZE
    }

    #[getter]
    fn nonce_size(&self) -> usize {
        vdaf::NONCE_SIZE
    }

    /// Length of output and aggregate share vectors.
    fn output_length(&self) -> usize {
        self.inner.output_length()
    }

    /// (public_share, leader_input_share, helper_input_share), each encoded.
    fn shard<'py>(
        &self,
        py: Python<'py>,
        ctx: &[u8],
        measurement: Vec<Bound<'py, PyAny>>,
        nonce: &[u8],
    ) -> PyResult<(
        Bound<'py, PyBytes>,
        Bound<'py, PyBytes>,
        Bound<'py, PyBytes>,
    )> {
        let measurement = int_list(
            &measurement,
            "measurement",
            MeasurementError::new_err,
            "too large for any Prio3 measurement",
        )?;
        let inner = &self.inner;
        let (public, leader, helper) = detached(py, || inner.shard(ctx, &measurement, nonce))?;
        Ok((
            PyBytes::new(py, &public),
            PyBytes::new(py, &leader),
            PyBytes::new(py, &helper),
        ))
    }

    /// TESTS ONLY: shard a raw encoded input without range checks (a malicious client).
    fn shard_unchecked_for_tests<'py>(
        &self,
        py: Python<'py>,
        ctx: &[u8],
        encoded: Vec<Bound<'py, PyAny>>,
        nonce: &[u8],
    ) -> PyResult<(
        Bound<'py, PyBytes>,
        Bound<'py, PyBytes>,
        Bound<'py, PyBytes>,
    )> {
        let encoded = int_list(
            &encoded,
            "encoded",
            MeasurementError::new_err,
            "|encoded| must be below p/2",
        )?;
        let inner = &self.inner;
        let (public, leader, helper) =
            detached(py, || inner.shard_unchecked_for_tests(ctx, &encoded, nonce))?;
        Ok((
            PyBytes::new(py, &public),
            PyBytes::new(py, &leader),
            PyBytes::new(py, &helper),
        ))
    }

    /// (encoded verify state, encoded verifier share); agg_id 0 = leader, 1 = helper.
    #[allow(clippy::too_many_arguments)] // the VDAF's own argument list, plus the interpreter
    fn verify_init<'py>(
        &self,
        py: Python<'py>,
        verify_key: &[u8],
        ctx: &[u8],
        agg_id: i64,
        nonce: &[u8],
        public_share: &[u8],
        input_share: &[u8],
    ) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)> {
        let inner = &self.inner;
        let (state, share) = detached(py, || {
            inner.verify_init(verify_key, ctx, agg_id, nonce, public_share, input_share)
        })?;
        Ok((PyBytes::new(py, &state), PyBytes::new(py, &share)))
    }

    /// The encoded verifier message; raises VerifyError when the proof fails.
    fn verifier_shares_to_message<'py>(
        &self,
        py: Python<'py>,
        ctx: &[u8],
        leader_share: &[u8],
        helper_share: &[u8],
    ) -> PyResult<Bound<'py, PyBytes>> {
        let inner = &self.inner;
        let message = detached(py, || {
            inner.verifier_shares_to_message(ctx, leader_share, helper_share)
        })?;
        Ok(PyBytes::new(py, &message))
    }

    /// The encoded output share.
    fn verify_next<'py>(
        &self,
        py: Python<'py>,
        ctx: &[u8],
        agg_id: i64,
        state: &[u8],
        message: &[u8],
    ) -> PyResult<Bound<'py, PyBytes>> {
        let inner = &self.inner;
        let output_share = detached(py, || inner.verify_next(ctx, agg_id, state, message))?;
        Ok(PyBytes::new(py, &output_share))
    }

    /// Encoded aggregate share summing the output shares.
    fn aggregate<'py>(
        &self,
        py: Python<'py>,
        agg_id: i64,
        output_shares: Vec<Bound<'py, PyBytes>>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        // bytes objects are immutable and `output_shares` keeps them alive: safe to read
        // while detached.
        let shares: Vec<&[u8]> = output_shares.iter().map(|b| b.as_bytes()).collect();
        let inner = &self.inner;
        let total = detached(py, || inner.aggregate(agg_id, &shares))?;
        Ok(PyBytes::new(py, &total))
    }

    /// Sum of two aggregate shares.
    fn merge<'py>(
        &self,
        py: Python<'py>,
        agg_share: &[u8],
        other: &[u8],
    ) -> PyResult<Bound<'py, PyBytes>> {
        let inner = &self.inner;
        let total = detached(py, || inner.merge(agg_share, other))?;
        Ok(PyBytes::new(py, &total))
    }

    /// The aggregate share plus signed `noise` element-wise, mod p.
    fn add_noise<'py>(
        &self,
        py: Python<'py>,
        agg_share: &[u8],
        noise: Vec<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let noise = int_list(
            &noise,
            "noise",
            Prio3Error::new_err,
            "|noise| must be below p/2",
        )?;
        let inner = &self.inner;
        let noised = detached(py, || inner.add_noise(agg_share, &noise))?;
        Ok(PyBytes::new(py, &noised))
    }

    /// The aggregate result as signed ints (field values above p/2 are negative).
    fn unshard(
        &self,
        py: Python<'_>,
        leader_agg_share: &[u8],
        helper_agg_share: &[u8],
        num_measurements: i64,
    ) -> PyResult<Vec<i128>> {
        let inner = &self.inner;
        detached(py, || {
            inner.unshard(leader_agg_share, helper_agg_share, num_measurements)
        })
    }

    fn __repr__(&self) -> String {
        let inner = &self.inner;
        match inner.kind() {
            vdaf::Kind::Histogram => format!(
                "Prio3.histogram(length={}, chunk_length={})",
                inner.length(),
                inner.chunk_length()
            ),
            kind => format!(
                "Prio3.{}(length={}, bits={}, chunk_length={})",
                kind.name(),
                inner.length(),
                inner.bits(),
                inner.chunk_length()
            ),
        }
    }
}

/// Prio3 VDAFs (two aggregators) from ISRG's `prio` crate: bytes and ints in, bytes out.
#[pymodule]
mod quietwire_prio {
    #[pymodule_export]
    use super::{DecodeError, MeasurementError, Prio3Error, PyPrio3, VerifyError};
}
