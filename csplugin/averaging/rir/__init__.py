"""RIR classification (ASPIRE's RIRClass2D): Fourier-Bessel basis, steerable PCA, bispectrum,
randomized PCA, neighbours, alignment, diffusion maps and clustering."""
