"""Prio3 VDAFs (two aggregators) from ISRG's ``prio`` crate: bytes and ints in, bytes out.

The native module is stateless: every message is passed in and returned encoded, so each role
(client, leader, helper, collector) can run in its own process. Crypto work releases the GIL.
"""

from collections.abc import Sequence
from typing import ClassVar, final

class Prio3Error(ValueError):
    """Root of the binding's errors; raised as such for bad parameters and argument sizes."""

class DecodeError(Prio3Error):
    """Bytes that do not decode as the expected message."""

class MeasurementError(Prio3Error):
    """A measurement the VDAF cannot encode (out of range, wrong length)."""

class VerifyError(Prio3Error):
    """A report whose proof or joint randomness fails verification."""

@final
class Prio3:
    """One Prio3 VDAF instance with 2 aggregators, immutable."""

    VERIFY_KEY_SIZE: ClassVar[int]
    """32: bytes of the verification key both aggregators share."""
    NONCE_SIZE: ClassVar[int]
    """16: bytes of a report's nonce."""

    @staticmethod
    def l1_bound_sum(length: int, bits: int, chunk_length: int) -> Prio3:
        """Prio3L1BoundSum: ``length`` entries >= 0 whose sum is at most ``2**bits - 1``.

        ``bits`` in [1, 64]; ``chunk_length`` in [1, bits * (length + 1)].
        """

    @staticmethod
    def sum_vec(length: int, bits: int, chunk_length: int) -> Prio3:
        """Prio3SumVec: ``length`` entries, each in ``[0, 2**bits)``.

        ``bits`` in [1, 64]; ``chunk_length`` in [1, bits * length].
        """

    @staticmethod
    def histogram(length: int, chunk_length: int) -> Prio3:
        """Prio3Histogram: ``length`` buckets; a measurement is ``[bucket_index]``.

        ``chunk_length`` in [1, length].
        """

    @property
    def kind(self) -> str:
        """``"l1_bound_sum"``, ``"sum_vec"`` or ``"histogram"``."""

    @property
    def length(self) -> int: ...
    @property
    def bits(self) -> int:
        """Entry width in bits; 0 for a histogram."""

    @property
    def chunk_length(self) -> int: ...
    @property
    def field_modulus(self) -> int:
        """The prime p of the field (128-bit)."""

    @property
    def verify_key_size(self) -> int:
        """32."""

    @property
    def nonce_size(self) -> int:
        """16."""

    def output_length(self) -> int:
        """Length of output and aggregate share vectors."""

    def shard(
        self, ctx: bytes, measurement: Sequence[int], nonce: bytes
    ) -> tuple[bytes, bytes, bytes]:
        """Client: ``(public_share, leader_input_share, helper_input_share)``, encoded.

        Raises MeasurementError for a measurement out of range or of the wrong length, and
        Prio3Error for a nonce that is not 16 bytes.
        """

    def shard_unchecked_for_tests(
        self, ctx: bytes, encoded: Sequence[int], nonce: bytes
    ) -> tuple[bytes, bytes, bytes]:
        """TESTS ONLY: shard a raw FLP encoding (signed field elements) without range checks.

        What a malicious client could send: the report decodes under this VDAF, and its proof
        fails verification unless ``encoded`` is a valid encoding. Raises MeasurementError for
        an encoding of the wrong length.
        """

    def verify_init(
        self,
        verify_key: bytes,
        ctx: bytes,
        agg_id: int,
        nonce: bytes,
        public_share: bytes,
        input_share: bytes,
    ) -> tuple[bytes, bytes]:
        """Aggregator ``agg_id`` (0 leader, 1 helper): ``(verify_state, verifier_share)``."""

    def verifier_shares_to_message(
        self, ctx: bytes, leader_share: bytes, helper_share: bytes
    ) -> bytes:
        """The encoded verifier message; raises VerifyError when the proof fails."""

    def verify_next(self, ctx: bytes, agg_id: int, state: bytes, message: bytes) -> bytes:
        """The aggregator's encoded output share; raises VerifyError on a mismatch."""

    def aggregate(self, agg_id: int, output_shares: Sequence[bytes]) -> bytes:
        """Encoded aggregate share summing ``output_shares`` (zero for none)."""

    def merge(self, agg_share: bytes, other: bytes) -> bytes:
        """Sum of two encoded aggregate shares."""

    def add_noise(self, agg_share: bytes, noise: Sequence[int]) -> bytes:
        """``agg_share`` plus signed ``noise`` element-wise, mod p.

        ``len(noise)`` must equal ``output_length()`` and every ``|n|`` be below p/2.
        """

    def unshard(
        self, leader_agg_share: bytes, helper_agg_share: bytes, num_measurements: int
    ) -> list[int]:
        """Collector: the aggregate as signed ints (field values above p/2 are ``value - p``)."""
