from kubeloop.operators.cluster.main import main

main()
