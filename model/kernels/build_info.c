/* What this build of the kernel library can do, for model/kernels/build.py to ask. */

/* 1 when compiled with OpenMP (the kernels split their loops across PyTorch's threads), 0 when every
 * kernel runs on one core (e.g. Apple's clang, which has no -fopenmp). */
int kernels_use_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}
