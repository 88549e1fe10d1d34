# A script that creates a pool at import time, without the __main__ guard.
import polyproc

polyproc.set_start_method("spawn", force=True)
pool = polyproc.Pool(2)
print(pool.map(abs, [-1, -2]))
pool.close()
pool.join()
