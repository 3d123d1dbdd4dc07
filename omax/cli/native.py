"""``omax native``: build the native decode step on this machine, or say whether it is
built. ``make install`` runs ``omax native build``; so does a worker image's build."""

from __future__ import annotations

import time

import click

from omax.cli.main import cli


@cli.group("native")
def native_group() -> None:
    """The native decode step (omax/engine/native_decode.cpp), built once per machine.

    Without a build, decoding runs in Python (slower, same tokens).
    """


@native_group.command()
def build() -> None:
    """Build the native decode step for this machine (a C++ compile, done once).

    Needs a C++ compiler and ninja. A no-op where it is built; exits non-zero, saying
    why, where it cannot build (decoding then runs in Python).
    """
    from omax.engine import native

    st = native.status()
    if st.built:
        click.echo(f"native decode step already built: {st.path}")
        return
    click.echo(f"building the native decode step in {st.path.parent} (about a minute)")
    t0 = time.perf_counter()
    native.build()  # BuildError: one line on stderr, exit 1 (OmaxGroup)
    click.echo(f"built in {time.perf_counter() - t0:.0f} s: {st.path}")
    if st.missing:
        click.echo(
            f"this CPU lacks {' and '.join(st.missing)}: its matmul and attention kernels are ATen's"
        )


@native_group.command()
def status() -> None:
    """Say whether the native decode step is built here, where, and what it runs."""
    from omax.engine import native

    st = native.status()
    if st.built:
        click.echo("native decode step: built")
    else:
        click.echo("native decode step: not built, decoding runs in Python (`omax native build`)")
    if not st.enabled:
        click.echo("  omax.engine.native-decode is off: runners decode in Python")
    click.echo(f"  library:  {st.path}")
    if st.missing:
        kernels = f"ATen's (this CPU lacks {' and '.join(st.missing)})"
    else:
        kernels = f"its own ({' and '.join(native.OWN_KERNELS.values())})"
    click.echo(f"  kernels:  {kernels}")
    ninja = "ninja found" if st.ninja else "ninja not found"
    click.echo(f"  compiler: {st.compiler or 'not found'}, {ninja}")
