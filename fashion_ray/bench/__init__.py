"""Measuring code: the cascade and serving benchmarks, person recall on composites, built
action videos, synthetic scenes, and the GPU check. The top floor: only jobs/ and tests/
import it."""
